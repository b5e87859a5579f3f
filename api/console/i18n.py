"""Every string of the console, from a message catalog: `messages/<locale>/*.json`, English and Russian
(one file per page or area, merged; a key defined twice is refused at load).

The locale is the `lang` cookie (set by the language switch) when it names a catalog, else the best
match of `Accept-Language`, else English. A catalog is a flat map of keys to texts with `{name}`
placeholders; a key missing from a catalog falls back to English, and a key missing from English is a
bug that tests/console/test_i18n.py catches (every key the templates use exists, and Russian has all
of English's). Numbers and dates are formatted here, small and without Babel: the two locales need
only their separators and month names.
"""

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

from fastapi import Request

MESSAGES = Path(__file__).resolve().parent / "messages"
LOCALES = ("en", "ru")
DEFAULT_LOCALE = "en"
LANG_COOKIE = "lang"
# Thousands and decimal separators: Russian groups with a no-break space and uses a decimal comma.
_SEPARATORS = {"en": (",", "."), "ru": ("\u00a0", ",")}


def catalog_files(locale: str) -> list[Path]:
    return sorted((MESSAGES / locale).glob("*.json"))


@cache
def catalog(locale: str) -> dict[str, str]:
    merged: dict[str, str] = {}
    for path in catalog_files(locale):
        part: dict[str, str] = json.loads(path.read_text(encoding="utf-8"))
        twice = merged.keys() & part.keys()
        if twice:
            raise ValueError(f"{path}: keys defined in another file too: {sorted(twice)}")
        merged.update(part)
    return merged


def _accepted(header: str) -> list[str]:
    """The languages of an `Accept-Language` header, best first (`q=0` ones dropped)."""
    ranked = []
    for position, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if tag and quality > 0:
            ranked.append((-quality, position, tag.strip().lower()))
    return [tag for _, _, tag in sorted(ranked)]


def choose_locale(request: Request) -> str:
    chosen = request.cookies.get(LANG_COOKIE)
    if chosen in LOCALES:
        return chosen
    for tag in _accepted(request.headers.get("accept-language", "")):
        primary = tag.partition("-")[0]
        if primary in LOCALES:
            return primary
    return DEFAULT_LOCALE


@dataclass(frozen=True)
class Translator:
    """What a template calls: `t(key, **values)`, `number(n)`, `when(datetime)`."""

    locale: str

    def t(self, key: str, /, **values: object) -> str:
        text = catalog(self.locale).get(key)
        if text is None:
            text = catalog(DEFAULT_LOCALE)[key]  # a KeyError here is a key no catalog has: a bug
        return text.format(**values) if values else text

    def number(self, value: int | float, decimals: int = 0) -> str:
        thousands, point = _SEPARATORS[self.locale]
        whole, _, fraction = f"{value:,.{decimals}f}".partition(".")
        whole = whole.replace(",", thousands)
        return f"{whole}{point}{fraction}" if fraction else whole

    def when(self, moment: datetime) -> str:
        """A date and time in UTC, as `6 Dec 2026, 01:02 UTC` (English) or `6 дек. 2026, 01:02 UTC`."""
        moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
        month = self.t(f"month.{moment.month}")
        return f"{moment.day} {month} {moment.year}, {moment:%H:%M} UTC"
