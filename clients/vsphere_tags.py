"""vSphere tags through vCenter's vAPI REST API (pyVmomi has no tagging). Prefect-free.

vCenter keeps tags in its vAPI service, not in the SOAP inventory: a client logs in with POST
``/rest/com/vmware/cis/session`` and basic auth, then sends the session id it got back in the
``vmware-api-session-id`` header. Categories hold tags; a tag is attached to objects named by their type and
managed object id (``VirtualMachine``, ``vm-42``), so a tag resolves to VMs by moref.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx

from common.vsphere import VSphereEndpoint, VSphereError
from vmferry.errors import NotFoundError

SESSION_HEADER = "vmware-api-session-id"
VM_TYPE = "VirtualMachine"


class TagNotFound(VSphereError, NotFoundError):
    """vCenter has no such category or tag: a policy naming it would silently select nothing."""


@dataclass(frozen=True)
class TagName:
    """A tag as an operator names it: its category's name and its own (names are unique per category)."""

    category: str
    tag: str

    def __str__(self) -> str:
        return f"{self.category}/{self.tag}"


class VSphereTags:
    """One vAPI session on a vCenter; use as a context manager (it logs out at the end)."""

    def __init__(self, endpoint: VSphereEndpoint, *, timeout: float = 30) -> None:
        host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
        self.endpoint = endpoint
        self._http = httpx.Client(
            base_url=f"https://{host}:{endpoint.port}/rest",
            verify=endpoint.ssl_context(),
            timeout=timeout,
            headers={"Accept": "application/json"},
        )

    def __enter__(self) -> VSphereTags:
        try:
            response = self._http.post("/com/vmware/cis/session", auth=(self.endpoint.username, self.endpoint.password))
        except httpx.HTTPError as exc:
            self._http.close()
            raise VSphereError(f"cannot reach the vAPI of vCenter {self.endpoint.host}: {exc}") from exc
        if response.status_code == 401:
            self._http.close()
            raise VSphereError(
                f"vCenter {self.endpoint.host} refused the tagging login of {self.endpoint.username}: "
                "check the VCenter block's user and password"
            )
        self._check(response, "log in to the vAPI")
        self._http.headers[SESSION_HEADER] = response.json()["value"]
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        try:
            self._http.delete("/com/vmware/cis/session")
        except httpx.HTTPError:
            pass  # an abandoned session expires on vCenter by itself
        finally:
            self._http.close()

    def _check(self, response: httpx.Response, doing: str) -> None:
        if response.is_success:
            return
        raise VSphereError(
            f"vCenter {self.endpoint.host} could not {doing}: HTTP {response.status_code} {response.text[:300]}"
        )

    def _call(self, method: str, path: str, doing: str, *, action: str | None = None, body: Any = None) -> Any:
        try:
            response = self._http.request(method, path, params={"~action": action} if action else None, json=body)
        except httpx.HTTPError as exc:
            raise VSphereError(f"vCenter {self.endpoint.host} could not {doing}: {exc}") from exc
        self._check(response, doing)
        return response.json().get("value") if response.content else None

    # categories and tags

    def categories(self) -> dict[str, str]:
        """Category name to id."""
        ids = self._call("GET", "/com/vmware/cis/tagging/category", "list tag categories") or []
        named = (self._call("GET", f"/com/vmware/cis/tagging/category/id:{i}", "read a tag category") for i in ids)
        return {category["name"]: category["id"] for category in named}

    def tags_of(self, category_id: str) -> dict[str, str]:
        """Tag name to id, in one category."""
        ids = (
            self._call(
                "POST",
                f"/com/vmware/cis/tagging/tag/id:{category_id}",
                "list the tags of a category",
                action="list-tags-for-category",
            )
            or []
        )
        named = (self._call("GET", f"/com/vmware/cis/tagging/tag/id:{i}", "read a tag") for i in ids)
        return {tag["name"]: tag["id"] for tag in named}

    def tag_ids(self, names: list[TagName]) -> dict[TagName, str]:
        """The ids of these tags; one that does not exist is refused by name."""
        categories = self.categories()
        tags: dict[str, dict[str, str]] = {}
        found: dict[TagName, str] = {}
        for name in names:
            if name.category not in categories:
                raise TagNotFound(f"vCenter {self.endpoint.host} has no tag category {name.category!r}")
            if name.category not in tags:
                tags[name.category] = self.tags_of(categories[name.category])
            if name.tag not in tags[name.category]:
                raise TagNotFound(f"vCenter {self.endpoint.host} has no tag {name.tag!r} in category {name.category!r}")
            found[name] = tags[name.category][name.tag]
        return found

    def create_category(self, name: str, *, cardinality: str = "MULTIPLE") -> str:
        spec = {"name": name, "description": "", "cardinality": cardinality, "associable_types": []}
        return self._call(
            "POST", "/com/vmware/cis/tagging/category", f"create tag category {name!r}", body={"create_spec": spec}
        )

    def create_tag(self, category_id: str, name: str) -> str:
        spec = {"name": name, "description": "", "category_id": category_id}
        return self._call("POST", "/com/vmware/cis/tagging/tag", f"create tag {name!r}", body={"create_spec": spec})

    # associations

    def attach(self, tag_id: str, vm_moref: str) -> None:
        self._call(
            "POST",
            f"/com/vmware/cis/tagging/tag-association/id:{tag_id}",
            f"attach a tag to {vm_moref}",
            action="attach",
            body={"object_id": {"type": VM_TYPE, "id": vm_moref}},
        )

    def vms_tagged(self, names: list[TagName]) -> set[str]:
        """The morefs of the VMs carrying any of these tags."""
        if not names:
            return set()
        ids = self.tag_ids(names)
        attached = (
            self._call(
                "POST",
                "/com/vmware/cis/tagging/tag-association",
                "list the objects of tags",
                action="list-attached-objects-on-tags",
                body={"tag_ids": sorted(set(ids.values()))},
            )
            or []
        )
        return {obj["id"] for entry in attached for obj in entry.get("object_ids") or [] if obj.get("type") == VM_TYPE}
