"""Who may do what: reading the catalog is public; writes and recommender controls are staff-only.

The project default (REST_FRAMEWORK["DEFAULT_PERMISSION_CLASSES"]) is IsAdminUser, so a view
that forgets to choose is closed, not open.
"""

from rest_framework.permissions import SAFE_METHODS, BasePermission

STAFF_ONLY = ("Staff only: sign in as a staff user (session) or send a staff user's token "
              "in the header 'Authorization: Token <key>'.")


class IsStaff(BasePermission):
    message = STAFF_ONLY

    def has_permission(self, request, view):
        user = request.user
        return bool(user and user.is_authenticated and user.is_active and user.is_staff)


class IsStaffOrReadOnly(IsStaff):
    """GET/HEAD/OPTIONS for everyone; anything that changes data for active staff users."""

    def has_permission(self, request, view):
        return request.method in SAFE_METHODS or super().has_permission(request, view)
