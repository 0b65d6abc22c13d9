from rest_framework.pagination import PageNumberPagination


class PageNumber(PageNumberPagination):
    """``?page=N`` (from 1) and ``?page_size=M`` (at most 100; default REST_FRAMEWORK["PAGE_SIZE"])."""

    page_size_query_param = "page_size"
    max_page_size = 100
    invalid_page_message = "Page {page_number} does not exist ({message}). Pages start at 1."
