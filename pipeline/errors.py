"""The typed errors of keymail, one class for each thing that can go wrong.

    KeymailError
    ├── UsageError                   bad option, config or input file (exit 2)
    │   ├── ConfigError              config file invalid
    │   ├── WeakKdfParametersError   wrapping refused below the KDF minimum
    │   └── BatchError               batch folder missing, corrupt or in use
    ├── RecordError                  one bad record: line, field, reason
    ├── CodeError                    an EAK, account code or QR payload refused;
    │   │                            the subclasses are the diagnoses, in the
    │   │                            order they are checked
    │   ├── MalformedCodeError       1. mistyped or not a code (names the groups)
    │   │   └── KdfParametersError       KDF cost above the cap, refused unrun
    │   ├── DifferentAccountError    2. made for another account
    │   ├── CodeBeforeResetError     3. made before a password reset
    │   ├── OutdatedCodeError        4. made before a password change
    │   ├── WrongPasswordError       5. the password does not unwrap it
    │   └── UnrecognizedCodeError    newer than the registry, or key check differs
    ├── RegistryError                registry missing, unreadable or inconsistent
    │   └── UnknownAccountError      no account with that email or account_id
    ├── KeystoreError                device keystore unreadable
    ├── RenderError                  a template or kit render failed
    │   └── FetchRefusedError        a template asked for a forbidden URL
    └── DeliveryError                writing or sending a message failed
        ├── SmtpConnectionError      could not connect, or the server went away
        │   └── SmtpTlsError         TLS refused: certificate, or no STARTTLS
        └── SmtpAuthError            the SMTP server refused the credentials

Messages say what failed and what to do, quoting the offending value; they never
hold a password, an account key or an EAK. Diagnoses carry the exit code that
`keymail unlock` ends with.
"""

from __future__ import annotations

import datetime as dt


class KeymailError(Exception):
    """Base class of every error keymail raises on purpose."""


class UsageError(KeymailError):
    """An option, config file or input file is unusable as given."""


class ConfigError(UsageError):
    """The config file is missing a value or holds an invalid one."""


class WeakKdfParametersError(UsageError):
    """Wrapping was asked for with KDF parameters below the minimum."""


class RecordError(KeymailError):
    """One record of a records file is invalid; the batch goes on without it."""

    def __init__(self, line: int, field: str, reason: str) -> None:
        self.line = line
        self.field = field
        self.reason = reason
        super().__init__(f'record {line}: field "{field}": {reason}')


class CodeError(KeymailError):
    """An EAK could not be used; the subclass says why."""

    exit_code = 1
    title = "code refused"


class MalformedCodeError(CodeError):
    """Not an EAK at all, or mistyped: caught before any KDF runs."""

    exit_code = 10
    title = "malformed or mistyped code"

    def __init__(self, message: str, groups: tuple[int, ...] = ()) -> None:
        self.groups = groups
        super().__init__(message)


class KdfParametersError(MalformedCodeError):
    """The code asks for a KDF cost above the cap; the KDF is not run."""


class DifferentAccountError(CodeError):
    """The code's account fingerprint is not the signed-in account's."""

    exit_code = 11
    title = "code from a different account"


class CodeBeforeResetError(CodeError):
    """The code's key generation is older than the account's current one."""

    exit_code = 12
    title = "code from before a password reset"

    def __init__(self, message: str, code_generation: int, generation: int) -> None:
        self.code_generation = code_generation
        self.generation = generation
        super().__init__(message)


class OutdatedCodeError(CodeError):
    """The code's password epoch is older: made before a password change."""

    exit_code = 13
    title = "outdated code (made before a password change)"

    def __init__(self, message: str, issued: dt.date) -> None:
        self.issued = issued
        super().__init__(message)


class WrongPasswordError(CodeError):
    """The AEAD refused the ciphertext: the password is not the one wrapped."""

    exit_code = 14
    title = "wrong password"


class UnrecognizedCodeError(CodeError):
    """The code is newer than the registry knows, or its key check differs."""

    exit_code = 15
    title = "code not recognized for this account"


class RegistryError(KeymailError):
    """The registry is missing, unreadable or does not hold what was asked."""


class UnknownAccountError(RegistryError):
    """No account in the registry matches the email or account_id given."""


class KeystoreError(KeymailError):
    """The device keystore folder cannot be read or written."""


class RenderError(KeymailError):
    """A template, the QR or the kit PDF could not be rendered."""


class FetchRefusedError(RenderError):
    """A template asked for a URL outside the template folder."""


class BatchError(UsageError):
    """A batch folder is missing, corrupt, or already in use."""


class DeliveryError(KeymailError):
    """A message could not be written or sent."""


class SmtpConnectionError(DeliveryError):
    """The SMTP server could not be reached or the TLS handshake failed."""


class SmtpTlsError(SmtpConnectionError):
    """TLS could not be set up: an untrusted certificate, or no STARTTLS.

    A configuration problem (--cafile, the URL's scheme), not a passing one.
    """


class SmtpAuthError(DeliveryError):
    """The SMTP server refused the user name or password."""
