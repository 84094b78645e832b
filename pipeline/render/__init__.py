"""The render stage: templates (env), QR codes (qr) and the kit PDF (kit).

Import the submodules directly; this package stays empty so that importing
the render context does not load WeasyPrint.
"""
