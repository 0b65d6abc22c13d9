from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.urls import reverse
from tqdm import tqdm

from catalog.import_runs import catalog_import_recorded
from catalog.importing import CatalogFormatError, catalog_parse, folder_images


class Command(BaseCommand):
    help = ("Import products from a CSV and a folder of images: our format (sku, title, category, images[, price, "
            "description]; several images per row separated by ';' or '|'; common column names such as image or "
            "name are read too), a Shopify product export or a WooCommerce product export, recognised from the "
            "header (the format and its column mapping are printed first). Images named by URL are looked up in "
            "the folder by their file name; those not there are downloaded by the worker. Bad rows are reported with their line number and skipped; re-running "
            "updates instead of duplicating.")

    def add_arguments(self, parser):
        parser.add_argument("csv", type=Path)
        parser.add_argument("--images", type=Path, help="folder the image paths are relative to, and where images "
                            "named by URL are looked up by file name (default: the CSV's folder)")

    def handle(self, *args, csv, images=None, **options):
        if not csv.is_file():
            raise CommandError(f"{csv} is not a file.")
        open_image = folder_images(images or csv.parent)
        with tqdm(desc="validating", unit="row", disable=options["verbosity"] == 0) as bar:
            try:
                parsed = catalog_parse(csv_bytes=csv.read_bytes(), open_image=open_image, progress=bar.update)
            except CatalogFormatError as exc:
                raise CommandError(str(exc))
        self.stdout.write(f"Format: {parsed.layout.describe()}")
        for error in parsed.errors:
            self.stderr.write(f"skipped {error}")
        with tqdm(total=len(parsed.rows), desc="importing", unit="product",
                  disable=options["verbosity"] == 0) as bar:
            # Recorded as an ImportRun: the admin follows it (rows, then pictures, with the time left).
            run, summary = catalog_import_recorded(parsed=parsed, source=csv.name, origin="command", progress=bar.update)
        self.stdout.write(f"Import {run.pk}: follow its pictures in the admin, "
                          f"{reverse('admin:catalog_importrun_change', args=[run.pk])}")
        if summary.downloads_queued:
            self.stdout.write(f"{summary.downloads_queued} pictures named by URL queued for download by the worker.")
        self.stdout.write(self.style.SUCCESS(
            f"{summary.created} created, {summary.updated} updated, {summary.images_added} images added, "
            f"{len(parsed.errors)} rows skipped."))
