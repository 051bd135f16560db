"""``sovereign images``: build the default guest image and import images into the catalog.

Owns the image commands of the CLI. Like ``sovereign hosts`` they are local operator commands:
they run with the control plane's own configuration on its host, put the image's files into the
content-addressed image store (``IMAGE_DIR``, :class:`enclaves.imagestore.ImageStore`) and add
the catalog entry through :meth:`~sovereign.services.catalog.CatalogService.import_image`
(audited ``image:import``, actor ``system:cli``). The catalog's checksum is the store's:
provisioning finds the files by it and verifies them before a host gets them. Building is
:mod:`enclaves.imagebuild`'s (cached by recipe digest); nothing here talks to a hypervisor.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from sovereign.cli_hosts import cli_context, parse_label
from sovereign.errors import SovereignError


def _app_and_services() -> tuple[Any, Any]:
    from sovereign import app_context, create_app  # noqa: PLC0415

    app = create_app()
    return app, app_context.services(app)


def _store(app: Any) -> Any:
    from enclaves.imagestore import ImageStore  # noqa: PLC0415
    from sovereign.settings import Settings  # noqa: PLC0415

    directory = Settings.of(app.config).image_dir
    if not directory:
        raise click.ClickException("IMAGE_DIR is not set")
    return ImageStore(directory)


def _fail(message: str) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(2)


def _import(
    *,
    disk: Path,
    kernel: Path | None,
    initrd: Path | None,
    cmdline: str,
    recipe_digest: str,
    name: str,
    max_label: str,
    description: str,
) -> None:
    from enclaves.errors import EnclaveError  # noqa: PLC0415

    try:
        app, services = _app_and_services()
        label = parse_label(services, max_label)
        click.echo(f"copying {disk} into the image store (hashing as it goes)", err=True)
        stored = _store(app).add(
            disk, kernel=kernel, initrd=initrd, cmdline=cmdline, recipe_digest=recipe_digest
        )
        image = services.catalog.import_image(
            cli_context(),
            name=name,
            checksum=stored.checksum,
            max_label=label,
            image_format=stored.format,
            description=description,
        )
    except SovereignError as e:
        _fail(e.message)
    except (EnclaveError, ValueError, OSError) as e:
        _fail(str(e))
    click.echo(f"imported {image.name} ({image.checksum}), maximum label {image.max_label}")


@click.group()
def images() -> None:
    """Approved guest images: build the default one, import others."""


@images.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="Catalog name of the image.")
@click.option(
    "--max-label", required=True, help="Highest label it may run at: LEVEL or LEVEL:COMP,..."
)
@click.option(
    "--kernel",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Kernel for direct boot (with --initrd).",
)
@click.option(
    "--initrd",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Initramfs for direct boot (with --kernel).",
)
@click.option(
    "--cmdline",
    default="root=/dev/vda rw console=ttyS0",
    show_default=True,
    help="Kernel command line for direct boot.",
)
@click.option("--description", default="", help="What the image is, for the catalog.")
def images_import(  # noqa: PLR0917 - click passes the options by name
    file: Path,
    name: str,
    max_label: str,
    kernel: Path | None,
    initrd: Path | None,
    cmdline: str,
    description: str,
) -> None:
    """Import the qcow2 image FILE into the image store and the catalog."""
    _import(
        disk=file,
        kernel=kernel,
        initrd=initrd,
        cmdline=cmdline if kernel else "",
        recipe_digest="",
        name=name,
        max_label=max_label,
        description=description,
    )


@images.command("build")
@click.option("--name", default=None, help="Catalog name (default: the recipe's name).")
@click.option(
    "--max-label", required=True, help="Highest label it may run at: LEVEL or LEVEL:COMP,..."
)
@click.option("--no-import", is_flag=True, help="Only build (or find) the cached image.")
@click.option(
    "--cuda",
    default=None,
    metavar="TAG",
    help="The production variant: PyTorch's CUDA build from its wheel index (e.g. cu128) and "
    "Debian's NVIDIA driver. Needs that index and non-free; not built by the test suite.",
)
def images_build(name: str | None, max_label: str, no_import: bool, cuda: str | None) -> None:
    """Build the default guest image (cached by recipe digest) and import it."""
    from enclaves import imagebuild  # noqa: PLC0415

    try:
        recipe = imagebuild.cuda_recipe(cuda) if cuda else imagebuild.default_recipe()
        built = imagebuild.build(recipe)
    except (imagebuild.ImageBuildError, OSError, ValueError) as e:
        _fail(str(e))
    click.echo(f"image {built.image} ({built.size >> 20} MiB), recipe {built.recipe_digest}")
    if no_import:
        return
    _import(
        disk=built.image,
        kernel=built.kernel,
        initrd=built.initrd,
        cmdline=built.cmdline,
        recipe_digest=built.recipe_digest,
        name=name or recipe.name,
        max_label=max_label,
        description=f"{recipe.name}: Debian {recipe.suite}, {', '.join(recipe.wheels)}, agent",
    )
