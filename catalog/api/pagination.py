from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination


class PageNumber(PageNumberPagination):
    """``?page=N`` (from 1) and ``?page_size=M`` (1-100; default REST_FRAMEWORK["PAGE_SIZE"])."""

    page_size_query_param = "page_size"
    max_page_size = 100
    invalid_page_message = "Page {page_number} does not exist ({message}). Pages start at 1."

    def get_page_size(self, request):
        # DRF ignores a bad page_size silently; say what is wrong instead.
        raw = request.query_params.get(self.page_size_query_param, "")
        if raw == "":
            return self.page_size
        if not raw.isdigit() or not 1 <= int(raw) <= self.max_page_size:
            raise ValidationError({self.page_size_query_param: [
                f"page_size must be a whole number from 1 to {self.max_page_size} (got {raw[:20]!r})."]},
                code="invalid")
        return int(raw)

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_query_param:
                parameter["schema"]["minimum"] = 1
                parameter["description"] = "Page number, from 1 (404 past the last page)."
            elif parameter["name"] == self.page_size_query_param:
                parameter["schema"].update(minimum=1, maximum=self.max_page_size)
                parameter["description"] = f"Results per page, 1-{self.max_page_size} (default {self.page_size})."
        return parameters
