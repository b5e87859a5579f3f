"""What every `list` command does: fetch the items (all pages, or the first `--limit`), then print them
as JSON (`--json`) or as a table."""

from __future__ import annotations

from collections.abc import Sequence

from cli import output
from cli.client import Params
from cli.options import api


def listed(
    path: str,
    *,
    params: Params = None,
    limit: int | None,
    as_json: bool,
    columns: Sequence[output.Column],
    empty: str,
) -> None:
    with api() as client:
        rows = client.items(path, params, limit)
    if as_json:
        output.print_json(rows)
        return
    output.table(rows, columns, empty=empty)
