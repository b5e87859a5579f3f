"""What the Packages and Datasets pages' uploads share: the CSRF check of a streamed body, and the two
answers (JSON for `upload.js`, a redirect or the page again without script).

An upload streams into scratch files as the REST upload routes do (`api/core/uploads.py`), so its
CSRF token cannot come from `request.form()` (that would read the whole body first). A script sends
the token in the `X-CSRF-Token` header, checked before the first byte is read; a form posted without
script carries it as its `csrf_token` field, checked once the body is in scratch files and before
anything is stored or changed (a forged upload leaves nothing: the scratch files are removed).
"""

import hmac

from fastapi import Request
from starlette.responses import JSONResponse, Response

from api.console import csrf
from api.console.pages import redirect
from api.console.session import ConsoleSession
from api.core.uploads import Upload

# The console's own fields of an upload's form, taken out before the REST route's checks see it.
CONSOLE_FIELDS = ("csrf_token",)


def _matches(sent: str | None, signed_in: ConsoleSession) -> bool:
    return bool(sent) and hmac.compare_digest(str(sent).encode(), signed_in.csrf.encode())


def from_script(request: Request, signed_in: ConsoleSession) -> bool:
    """True for `upload.js` (its header checked now), False for a plain form (checked by `check_form`)."""
    sent = request.headers.get(csrf.HEADER)
    if sent is None:
        return False
    if not _matches(sent, signed_in):
        raise csrf.CsrfRefused()
    return True


def check_form(upload: Upload, script: bool, signed_in: ConsoleSession) -> None:
    """The form's token, for an upload sent without script; the console's fields removed either way."""
    sent = upload.fields.pop("csrf_token", None)
    if not script and not _matches(sent, signed_in):
        raise csrf.CsrfRefused()


def done(script: bool, url: str, **facts: object) -> Response:
    """Where to go once the version is made: JSON for the script, a 303 for a form."""
    if script:
        return JSONResponse({"url": url, **facts}, status_code=201)
    return redirect(url)
