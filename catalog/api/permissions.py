"""Who may do what: reading the catalog is public; everything else needs an active staff user who
holds the Django permissions the action needs: the ones the admin checks for the same change.

Contract:
- A protected view names its permissions per action in ``required_permissions`` (action -> names
  "app_label.codename"); an action it does not name is refused: closed by default, as the project
  default (REST_FRAMEWORK["DEFAULT_PERMISSION_CLASSES"] = IsAdminUser) closes a view that forgets to
  choose. A permission that depends on the data (a product created with images) is checked by the
  view with :func:`permissions_require` before anything is written.
- A "view_" permission is also held through the model's "change_" one, as in the admin. Superusers
  hold every permission; inactive users none.
- Refusals: anonymous 401 (with WWW-Authenticate); not staff 403 with STAFF_ONLY; staff without a
  permission 403 naming it.
"""

from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import SAFE_METHODS, BasePermission

STAFF_ONLY = ("Staff only: sign in as a staff user (session) or send a staff user's token "
              "in the header 'Authorization: Token <key>'.")


def is_staff(user) -> bool:
    return bool(user and user.is_authenticated and user.is_active and user.is_staff)


def permission_held(user, name: str) -> bool:
    if user.has_perm(name):
        return True
    app_label, _, codename = name.partition(".")
    return codename.startswith("view_") and user.has_perm(f"{app_label}.change_{codename[len('view_'):]}")


def staff_holds(request, name: str) -> bool:
    """True for an active staff user holding ``name`` (e.g. to show staff-only rows)."""
    return is_staff(request.user) and permission_held(request.user, name)


def missing_message(names) -> str:
    quoted = ", ".join(f'"{name}"' for name in names)
    return (f"Your staff user lacks the permission{'s' if len(names) > 1 else ''} {quoted} for this. An "
            "administrator can grant it in the admin (Users or Groups), as for the same change there.")


def permissions_require(request, *names) -> None:
    """Raise 403 naming what is missing unless the (staff) user holds every one of ``names``."""
    missing = [name for name in names if not permission_held(request.user, name)]
    if missing:
        raise PermissionDenied(missing_message(missing))


class IsStaff(BasePermission):
    message = STAFF_ONLY

    def has_permission(self, request, view):
        return is_staff(request.user)


class IsStaffOrReadOnly(IsStaff):
    """GET/HEAD/OPTIONS for everyone; anything that changes data for active staff users."""

    def has_permission(self, request, view):
        return request.method in SAFE_METHODS or super().has_permission(request, view)


class StaffWithPermissions(IsStaff):
    """Active staff holding the view's ``required_permissions[action]`` (see the module's contract).
    OPTIONS (DRF's ``metadata``) needs staff only, as DRF's DjangoModelPermissions."""

    def has_permission(self, request, view):
        if not super().has_permission(request, view):
            return False
        action = getattr(view, "action", None)
        if action == "metadata":
            return True
        names = getattr(view, "required_permissions", {}).get(action)
        if names is None:
            self.message = f"This operation ({action or request.method}) names no permission: it is refused."
            return False
        missing = [name for name in names if not permission_held(request.user, name)]
        if missing:
            self.message = missing_message(missing)
            return False
        return True


class StaffWithPermissionsOrReadOnly(StaffWithPermissions, IsStaffOrReadOnly):
    """Reads for everyone; writes as StaffWithPermissions."""

    def has_permission(self, request, view):
        return request.method in SAFE_METHODS or StaffWithPermissions.has_permission(self, request, view)
