"""The sender's settings: product name, From address, subject, support address."""

from __future__ import annotations

import tomllib
from email.headerregistry import Address
from email.utils import parseaddr
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from pipeline.errors import ConfigError
from pipeline.records import HEADER_BREAKERS


class Settings(BaseModel):
    """What a config file (TOML) or the options may set; defaults run the demo."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    product: str = "Keymail Demo"
    sender: str = "Keymail Demo <no-reply@example.com>"
    support_email: str = "support@example.com"
    subject: str = "Your {product} authentication email"

    @field_validator("product", "sender", "support_email", "subject")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        if HEADER_BREAKERS.search(value):
            raise ValueError("must not hold control characters or line breaks")
        return value.strip()

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str) -> str:
        _, address = parseaddr(value)
        if "@" not in address:
            raise ValueError(
                f"not a From address like 'Name <me@example.com>': {value!r}"
            )
        return value

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str) -> str:
        try:
            value.format(product="x", name="x")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"may use only {{product}} and {{name}}: {value!r} ({exc})"
            ) from None
        return value

    @property
    def sender_domain(self) -> str:
        return Address(addr_spec=parseaddr(self.sender)[1]).domain

    def subject_for(self, name: str) -> str:
        return self.subject.format(product=self.product, name=name)


def load(path: Path | None, overrides: dict[str, Any]) -> Settings:
    """Read the TOML file (if any), then apply the options that were given."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except OSError as exc:
            raise ConfigError(
                f"cannot read config file {path}: {exc.strerror}"
            ) from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not UTF-8 text") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path.name}: not valid TOML: {exc}") from None
    values.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f'"{".".join(str(part) for part in error["loc"])}": {error["msg"]}'
            for error in exc.errors()
        )
        source = path.name if path else "options"
        raise ConfigError(f"{source}: {problems}") from None
