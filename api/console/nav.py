"""The console's pages in the order of the nav, and which of them are built.

A page lives in a module of `api/console/views/` that declares its `PAGE` (a slug of this list) and
its `router`; `install_console` includes every such module and marks its slug built. A page not
built yet is shown in the nav unlinked. Project pages live at `/ui/projects/<project>/<slug>/`, the
administrators' pages at `/ui/<slug>/`.
"""

from dataclasses import dataclass
from urllib.parse import quote


@dataclass(frozen=True)
class NavPage:
    slug: str
    in_project: bool  # a project's page (`/ui/projects/<p>/<slug>/`) or the administrators' own

    @property
    def key(self) -> str:
        return f"nav.{self.slug}"

    def url(self, project: str | None) -> str | None:
        if not self.in_project:
            return f"/ui/{self.slug}/"
        if project is None:
            return None
        return f"{project_url(project)}{self.slug}/"


PAGES = (
    NavPage("templates", in_project=True),
    NavPage("processes", in_project=True),
    NavPage("models", in_project=True),
    NavPage("services", in_project=True),
    NavPage("packages", in_project=True),
    NavPage("datasets", in_project=True),
    NavPage("machines", in_project=False),
    NavPage("people", in_project=False),
)
BY_SLUG = {page.slug: page for page in PAGES}
# Filled by `install_console` from the views it includes.
BUILT: set[str] = set()


def project_url(name: str) -> str:
    return f"/ui/projects/{quote(name, safe='')}/"


def nav_links(project: str | None) -> list[tuple[str, str | None, str]]:
    """(message key, URL or None, slug) for each page: None while unbuilt, or a project's page with no
    project chosen."""
    return [(page.key, page.url(project) if page.slug in BUILT else None, page.slug) for page in PAGES]
