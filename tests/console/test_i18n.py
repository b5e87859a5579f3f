"""The message catalogs: Russian says everything English says, every key a template asks for
exists, and numbers and dates take the locale's form."""

import json
import re
from datetime import UTC, datetime

from api.console.i18n import LOCALES, Translator, catalog, catalog_files
from api.console.nav import PAGES
from api.console.pages import HERE

_KEY = re.compile(r"""\bt\(\s*["']([a-z_.0-9]+)["']""")


def test_every_catalog_has_the_same_keys_as_english() -> None:
    english = set(catalog("en"))
    for locale in LOCALES:
        keys = set()
        for path in catalog_files(locale):
            keys |= set(json.loads(path.read_text(encoding="utf-8")))
        assert keys - english == set(), f"{locale} has keys English lacks"
        assert english - keys == set(), f"{locale} lacks keys"
        assert all(catalog(locale)[key].strip() for key in keys), f"{locale} has an empty text"


def test_every_key_the_console_uses_is_in_the_catalog() -> None:
    used = set()
    for path in [*(HERE / "templates").rglob("*.html"), *HERE.rglob("*.py")]:
        used |= {key for key in _KEY.findall(path.read_text(encoding="utf-8")) if not key.endswith(".")}
    # Keys built from a name: the nav's pages, their descriptions, the months, the languages.
    used |= {page.key for page in PAGES} | {f"{page.key}.about" for page in PAGES}
    used |= {f"month.{month}" for month in range(1, 13)} | {f"lang.{locale}" for locale in LOCALES}
    used |= {"error.403", "error.404"}
    assert used - set(catalog("en")) == set()


def test_catalog_files_pair_up_between_locales() -> None:
    """Each page keeps its messages in a file of its own, in every locale."""
    names = {path.name for path in catalog_files("en")}
    for locale in LOCALES:
        assert {path.name for path in catalog_files(locale)} == names


def test_placeholders_match_between_catalogs() -> None:
    fields = re.compile(r"{(\w+)}")
    for key, text in catalog("en").items():
        assert set(fields.findall(catalog("ru")[key])) == set(fields.findall(text)), key


def test_numbers_and_dates_in_the_locale() -> None:
    moment = datetime(2026, 12, 6, 9, 5, tzinfo=UTC)
    assert Translator("en").number(1234567) == "1,234,567"
    assert Translator("ru").number(1234567.5, 1) == "1\u00a0234\u00a0567,5"
    assert Translator("en").when(moment) == "6 Dec 2026, 09:05 UTC"
    assert Translator("ru").when(moment) == "6 дек. 2026, 09:05 UTC"
