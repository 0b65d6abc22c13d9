"""OpenAPI generation (drf-spectacular): every operation also documents the errors it can answer.

The errors come from the same few places for every view (authentication, permissions, input
validation, lookups, throttles), so they are derived here from the view instead of being
repeated on each endpoint. All of them have the shape of catalog.api.exceptions.
"""

from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from rest_framework.permissions import SAFE_METHODS, AllowAny

from catalog.api.permissions import IsStaffOrReadOnly

ERRORS = {
    "400": "Invalid input: `errors` lists each problem with its field (e.g. an upload that is not an image, "
           "too large, or has too many pixels; an unknown category id; min_price above max_price).",
    "401": "Not authenticated, or the token is invalid: sign in or send `Authorization: Token <key>`.",
    "403": "Authenticated but not allowed (staff only), or a session request without its CSRF token.",
    "404": "No such object (or page).",
    "409": ("Conflict: another request saved the same SKU at the same time; nothing was saved. Use another "
            "SKU or change the existing product."),
    "415": "Unsupported Content-Type for the request body.",
    "429": "Too many requests from this client: wait for the number of seconds in Retry-After.",
}


SUCCESS = {"200": "OK.", "201": "Created.", "202": "Accepted: the work is queued for a worker.",
           "204": "Done (no body)."}


class AutoSchema(SpectacularAutoSchema):
    def _is_public(self) -> bool:
        permissions = self.view.get_permissions()
        return all(isinstance(p, AllowAny) or (isinstance(p, IsStaffOrReadOnly) and self.method in SAFE_METHODS)
                   for p in permissions)

    def get_auth(self):
        auth = super().get_auth()
        if auth and {} not in auth and self._is_public():
            auth.append({})  # no credentials needed
        return auth

    def _error_codes(self, operation) -> list[str]:
        codes = ["401"]  # any request may carry a bad token, even to a public endpoint
        if not self._is_public() or self.method not in SAFE_METHODS:
            codes.append("403")
        has_query = any(p.get("in") == "query" for p in operation.get("parameters", []))
        if has_query or "requestBody" in operation:
            codes.append("400")
        if "{" in self.path or any(p.get("name") == "page" for p in operation.get("parameters", [])):
            codes.append("404")
        if self.method in ("POST", "PUT", "PATCH") and self.path.rstrip("/").endswith(("/products", "/products/{id}")):
            codes.append("409")  # catalog.services.CatalogConflict (a SKU saved concurrently)
        if "requestBody" in operation:
            codes.append("415")
        if self.view.get_throttles():
            codes.append("429")
        return codes

    def get_operation(self, path, path_regex, path_prefix, method, registry):
        operation = super().get_operation(path, path_regex, path_prefix, method, registry)
        if operation is None:
            return None
        from catalog.api.serializers import ErrorSerializer

        for parameter in operation.get("parameters", []):
            if parameter.get("in") == "query" and not parameter.get("required"):
                # Every optional query parameter treats an empty value as absent (?category=&min_price=).
                parameter["allowEmptyValue"] = True
        responses = operation["responses"]
        for code, response in responses.items():
            if not response.get("description"):
                response["description"] = SUCCESS.get(code, "")
        for code in self._error_codes(operation):
            if code in responses:
                continue
            response = self._get_response_for_code(ErrorSerializer, code, media_types=["application/json"])
            response["description"] = ERRORS[code]
            if code == "429":
                response["headers"] = {"Retry-After": {
                    "schema": {"type": "integer"}, "description": "Seconds to wait before retrying."}}
            responses[code] = response
        operation["responses"] = dict(sorted(responses.items()))
        return operation
