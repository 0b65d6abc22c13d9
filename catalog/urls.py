from django.urls import path

from catalog import views

app_name = "catalog"
urlpatterns = [
    path("", views.home, name="home"),
    path("search/", views.search, name="search"),
    path("search/photo/", views.photo_search, name="photo_search"),
    path("c/<slug:slug>/", views.category_detail, name="category"),
    path("p/<int:pk>/", views.product_detail, name="product"),
]
