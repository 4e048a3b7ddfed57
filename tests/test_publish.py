"""`azbuild publish` against Azurite, a real blob service on 127.0.0.1 (tests/azurite.py),
and the page arithmetic it rests on."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from azurite import Azurite
from sparse_vhd import make_sparse_vhd

from builder.cli import main
from builder.image.digest import sha256_file
from builder.image.disk import allocated_bytes
from builder.image.vhd import build_footer
from builder.publish import ranges
from builder.publish.auth import CONNECTION_STRING_ENV, choose_auth, parse_container_url
from builder.publish.blob import META_READY, META_SHA256, META_STATE, publish_blob
from builder.publish.ranges import MAX_PUT, PAGE
from builder.units import GiB, MiB

if TYPE_CHECKING:
    from builder.context import BuildContext

AZBUILD = Path(sys.executable).parent / "azbuild"


# --- page arithmetic ---------------------------------------------------------------------


def test_data_ranges_follow_the_file_systems_holes(tmp_path: Path) -> None:
    path = tmp_path / "sparse"
    with open(path, "wb") as f:
        f.truncate(64 * MiB)
        f.seek(8 * MiB)
        f.write(b"x" * MiB)
        f.seek(40 * MiB)
        f.write(b"y" * 2 * MiB)
    fd = os.open(path, os.O_RDONLY)
    try:
        found = ranges.data_ranges(fd, 64 * MiB)
    finally:
        os.close(fd)
    # A file system may allocate a little more than written, never less.
    assert ranges.total(found) < 4 * MiB
    for start, end in [(8 * MiB, 9 * MiB), (40 * MiB, 42 * MiB)]:
        assert any(a <= start and end <= b for a, b in found)


def test_nonzero_runs_skip_zero_blocks_on_the_files_grid() -> None:
    data = bytearray(64 * 1024)
    data[5000] = 1  # block 1 (4096..8192)
    data[20000:20001] = b"\x02"  # block 4 (16384..20480)
    data[20480] = 3  # block 5: joins block 4's run
    base = 1024 * 1024
    assert ranges.nonzero_runs(bytes(data), base) == [
        (base + 4096, base + 8192), (base + 16384, base + 24576)]
    assert ranges.nonzero_runs(bytes(4096), 0) == []
    # Starting mid-block, the first block is the short rest of the grid's block.
    assert ranges.nonzero_runs(b"\0" * 512 + b"\1" + b"\0" * 511, 3584) == [(4096, 4608)]


def test_subtract_chunks_align_and_merge() -> None:
    present = [(0, 100), (200, 300), (400, 500)]
    assert ranges.subtract([(50, 450)], present) == [(100, 200), (300, 400)]
    assert ranges.subtract([(0, 100)], present) == []
    assert ranges.subtract([(500, 600)], present) == [(500, 600)]
    assert list(ranges.chunks([(MAX_PUT - 512, MAX_PUT * 2 + 512)])) == [
        (MAX_PUT - 512, MAX_PUT), (MAX_PUT, 2 * MAX_PUT), (2 * MAX_PUT, 2 * MAX_PUT + 512)]
    assert ranges.align([(10, 20), (600, 700), (1023, 1030)], 4096) == [(0, 1536)]
    assert ranges.align([(10, 20), (1030, 1040), (4000, 4100)], 4096) == [
        (0, 512), (1024, 1536), (3584, 4096)]
    assert ranges.merge([(5, 7), (0, 5), (9, 10)]) == [(0, 7), (9, 10)]


def test_sparse_sha256_is_the_files_sha256(tmp_path: Path) -> None:
    path = tmp_path / "img.vhd"
    make_sparse_vhd(path, 64 * MiB, 8 * MiB, extent=4 * MiB, zero_extent=MiB)
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_auth_order() -> None:
    sas = parse_container_url("https://acct.blob.core.windows.net/images?sv=2022-11-02&sig=abcd")
    plain = parse_container_url("https://acct.blob.core.windows.net/images")
    assert sas.public == "https://acct.blob.core.windows.net/images"
    assert sas.container == "images"
    assert choose_auth(sas, {CONNECTION_STRING_ENV: "x"}) == "sas"
    assert choose_auth(plain, {CONNECTION_STRING_ENV: "x"}) == "connection-string"
    assert choose_auth(plain, {}) == "default-credential"
    emulator = parse_container_url("http://127.0.0.1:10000/devstoreaccount1/images")
    assert emulator.account_url == "http://127.0.0.1:10000/devstoreaccount1"


# --- against Azurite ---------------------------------------------------------------------


def _container(azurite: Azurite, name: str) -> Any:
    service: Any = azurite.service()
    return service.create_container(name)


def _sas_url(azurite: Azurite, container: str) -> str:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas
    from azurite import ACCOUNT, KEY

    sas = generate_container_sas(
        ACCOUNT, container, account_key=KEY,
        permission=ContainerSasPermissions(read=True, add=True, create=True, write=True,
                                           delete=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=1))
    return f"{azurite.account_url}/{container}?{sas}"


def _remote_sha256(blob: Any, size: int) -> str:
    """The test's own read-back: page ranges downloaded, zeros between them (what a page
    blob returns there), hashed."""
    digest = hashlib.sha256()
    offset = 0
    for r in sorted(blob.list_page_ranges(), key=lambda r: r.start):
        digest.update(bytes(r.start - offset))
        digest.update(blob.download_blob(offset=r.start, length=r.end + 1 - r.start).readall())
        offset = r.end + 1
    while offset < size:
        step = min(MAX_PUT, size - offset)
        digest.update(bytes(step))
        offset += step
    return digest.hexdigest()


def _env(azurite: Azurite) -> dict[str, str]:
    return {CONNECTION_STRING_ENV: azurite.connection_string}


@pytest.mark.slow
def test_sparse_8gib_image_sends_only_its_data(azurite: Azurite, tmp_path: Path) -> None:
    image = tmp_path / "big.vhd"
    data = make_sparse_vhd(image, 8 * GiB, 1 * GiB)
    container = _container(azurite, "big")
    url = f"{azurite.account_url}/big"
    result = publish_blob(image, url, force=True, env=_env(azurite))
    allocated = allocated_bytes(image)
    assert result.stats.sent <= allocated * 1.01
    assert result.stats.sent == data + PAGE  # the data and the footer, no zero page
    assert result.stats.skipped_zeros >= 16 * 8 * MiB  # the written zero extents
    assert result.stats.sent + result.stats.skipped == 8 * GiB + PAGE
    blob = container.get_blob_client("big.vhd")
    props = blob.get_blob_properties()
    assert props.size == 8 * GiB + PAGE
    assert props.metadata[META_SHA256] == result.sha256
    assert props.metadata[META_STATE] == "verified"
    assert props.metadata[META_READY] == "unknown"  # --force, no manifest: never checked
    assert _remote_sha256(blob, props.size) == result.sha256


def test_a_killed_upload_resumes_where_it_stopped(azurite: Azurite, tmp_path: Path) -> None:
    image = tmp_path / "resume.vhd"
    data = make_sparse_vhd(image, 1 * GiB, 256 * MiB, extent=32 * MiB)
    container = _container(azurite, "resume")
    blob = container.get_blob_client("resume.vhd")
    env = {**os.environ, **_env(azurite)}
    proc = subprocess.Popen(
        [str(AZBUILD), "publish", str(image), "--container-url",
         f"{azurite.account_url}/resume", "--jobs", "1", "--force"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stored = 0
    deadline = time.monotonic() + 120
    while stored < data // 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        try:
            stored = ranges.total([(r.start, r.end + 1) for r in blob.list_page_ranges()])
        except Exception:  # the blob is not created yet
            stored = 0
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the upload ended before it could be killed"
    before = ranges.total([(r.start, r.end + 1) for r in blob.list_page_ranges()])
    assert 0 < before < data
    result = publish_blob(image, f"{azurite.account_url}/resume", force=True,
                          env=_env(azurite))
    assert result.resumed
    remainder = data + PAGE - before
    assert result.stats.sent <= remainder + MAX_PUT
    assert result.stats.skipped_present >= before - MAX_PUT
    assert blob.get_blob_properties().metadata[META_STATE] == "verified"  # read back, equal


def test_a_corrupt_page_is_caught_and_the_next_run_starts_over(
    azurite: Azurite, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image = tmp_path / "small.vhd"
    make_sparse_vhd(image, 64 * MiB, 16 * MiB, extent=8 * MiB, zero_extent=MiB)
    container = _container(azurite, "corrupt")
    url = f"{azurite.account_url}/corrupt"
    monkeypatch.setenv(CONNECTION_STRING_ENV, azurite.connection_string)
    assert main(["publish", str(image), "--container-url", url, "--force"]) == 0
    blob = container.get_blob_client("small.vhd")
    with open(image, "rb") as f:
        f.seek(4096)
        bad = bytearray(f.read(PAGE))
    bad[100] ^= 0xFF
    blob.upload_page(bytes(bad), offset=4096, length=PAGE)  # the service now holds other bytes
    capsys.readouterr()
    assert main(["publish", str(image), "--container-url", url, "--force"]) == 1
    out, err = capsys.readouterr()
    assert "differs from" in err and "at byte 4096" in err
    assert blob.get_blob_properties().metadata[META_STATE] == "corrupt"
    # The same command again replaces the blob rather than trusting its pages.
    assert main(["publish", str(image), "--container-url", url, "--force"]) == 0
    out, err = capsys.readouterr()
    assert "verified sha256" in out
    assert _remote_sha256(blob, image.stat().st_size) == hashlib.sha256(
        image.read_bytes()).hexdigest()


def test_sas_in_the_url_with_json_progress_and_a_final_line(
    azurite: Azurite, tmp_path: Path
) -> None:
    image = tmp_path / "sas.vhd"
    data = make_sparse_vhd(image, 256 * MiB, 64 * MiB, extent=16 * MiB, zero_extent=MiB)
    _container(azurite, "sas")
    url = _sas_url(azurite, "sas")
    signature = url.split("sig=")[1].split("&")[0]
    env = {k: v for k, v in os.environ.items() if k != CONNECTION_STRING_ENV}
    proc = subprocess.run(
        [str(AZBUILD), "--log-format", "json", "publish", str(image), "--container-url", url,
         "--blob", "named.vhd", "--force"],
        env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stderr.splitlines()]
    progress = [r["progress"] for r in records if "progress" in r]
    uploads = [p for p in progress if p["phase"] == "upload"]
    assert uploads and uploads[-1]["done"] == uploads[-1]["total"] == image.stat().st_size
    assert uploads[-1]["sent"] == data + PAGE
    assert any(p["phase"] == "verify" for p in progress)
    assert any("the SAS in the container URL" in r["message"] for r in records)
    assert proc.stdout.startswith(f"published {azurite.account_url}/sas/named.vhd: sent ")
    assert "skipped" in proc.stdout and "/s; verified sha256" in proc.stdout
    assert signature not in proc.stdout + proc.stderr


def test_bad_credentials_are_a_clear_error_with_exit_2(
    azurite: Azurite, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image = tmp_path / "small.vhd"
    make_sparse_vhd(image, 32 * MiB, 4 * MiB, extent=4 * MiB, zero_extent=0)
    _container(azurite, "creds")
    monkeypatch.delenv(CONNECTION_STRING_ENV, raising=False)
    good = _sas_url(azurite, "creds")
    bad_sig = good.split("sig=")[0] + "sig=AAAAbadsignatureAAAA%3D"
    assert main(["publish", str(image), "--container-url", bad_sig, "--force"]) == 2
    err = capsys.readouterr().err
    assert "credentials refused by 127.0.0.1:" in err and "AAAAbadsignature" not in err
    wrong_key = azurite.connection_string.replace("Eby8", "Zby8")
    monkeypatch.setenv(CONNECTION_STRING_ENV, wrong_key)
    url = f"{azurite.account_url}/creds"
    assert main(["publish", str(image), "--container-url", url, "--force"]) == 2
    err = capsys.readouterr().err
    assert "credentials refused by 127.0.0.1:" in err and "Zby8" not in err
    monkeypatch.delenv(CONNECTION_STRING_ENV)
    assert main(["publish", str(image), "--container-url", url, "--force"]) == 2
    assert "only sent over https" in capsys.readouterr().err
    monkeypatch.setenv(CONNECTION_STRING_ENV, azurite.connection_string)
    missing = f"{azurite.account_url}/no-such-container"
    assert main(["publish", str(image), "--container-url", missing, "--force"]) == 2
    assert "container does not exist" in capsys.readouterr().err


def test_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = "https://acct.blob.core.windows.net/images?sv=1&sig=abcd1234"
    raw = tmp_path / "disk.vhd"
    raw.write_bytes(bytes(32 * MiB))
    assert main(["publish", str(raw), "--container-url", url]) == 2
    assert "is not an Azure fixed VHD: R01" in capsys.readouterr().err
    odd = tmp_path / "odd.vhd"  # a fixed VHD footer claiming a size that is not whole MiB
    footer = bytearray(build_footer(32 * MiB))
    odd.write_bytes(bytes(32 * MiB + PAGE) + bytes(footer))
    assert main(["publish", str(odd), "--container-url", url]) == 2
    assert "is not an Azure fixed VHD" in capsys.readouterr().err
    image = tmp_path / "img.vhd"
    make_sparse_vhd(image, 32 * MiB, 4 * MiB, extent=4 * MiB, zero_extent=0)
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"ready": False, "artifacts": [{"file": "img.vhd", "sha256": digest}]}))
    assert main(["publish", str(image), "--container-url", url]) == 2
    err = capsys.readouterr().err
    assert "not ready for Azure" in err and "--force" in err
    assert main(["publish", str(image), "--container-url", "ftp://x/y"]) == 2
    assert main(["publish", str(image), "--container-url", url, "--jobs", "0"]) == 2


PUBLISH_TEMPLATE = f"""\
name = "published"
[source]
disk_image = "base.qcow2"
[distro]
name = "debian"
version = "12"
[vm]
firmware = "uefi"

[[publish]]
type = "azure-page-blob"
container_url = "https://acct.blob.core.windows.net/images?sv=2022-11-02&sig=SecretSig123%3D"

[[publish]]
type = "azure-image"
disk_source = "upload"
subscription_id = "{"0" * 8}-0000-0000-0000-{"0" * 12}"
resource_group = "rg"
location = "westeurope"
image_name = "published-image"
timeout = "30m"

[[publish]]
type = "azure-gallery"
container_url = "https://acct.blob.core.windows.net/images"
storage_account_id = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Storage/x/a"
subscription_id = "s"
resource_group = "rg"
location = "westeurope"
gallery = "gal"
image_definition = "debian-12"
version = "1.2.3"
end_of_life = 2027-06-30
exclude_from_latest = true
keep_latest = 3
tags = {{ team = "images" }}
"""


def test_publish_entries_in_a_template(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    from builder.publish.entries import AzureGallery, AzureImage, AzurePageBlob
    from builder.template import load_template

    path = tmp_path / "t.toml"
    path.write_text(PUBLISH_TEMPLATE)
    entries = load_template(path).template.publish
    assert [type(e) for e in entries] == [AzurePageBlob, AzureImage, AzureGallery]
    image, gallery = entries[1], entries[2]
    assert isinstance(image, AzureImage) and image.timeout == 1800.0
    assert image.container_url is None and image.jobs == 8
    assert isinstance(gallery, AzureGallery) and str(gallery.end_of_life) == "2027-06-30"
    assert gallery.keep_latest == 3 and gallery.exclude_from_latest
    assert main(["inspect", str(path), "--format", "json"]) == 0
    out = capsys.readouterr().out
    assert "SecretSig123" not in out  # a SAS written straight into the template is masked
    assert json.loads(out)["publish"][2]["version"] == "1.2.3"
    bad = tmp_path / "bad.toml"
    bad.write_text(PUBLISH_TEMPLATE.replace('version = "1.2.3"', 'version = "1.2"')
                   .replace("[vm]", '[output]\nformats = ["raw"]\n[vm]'))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "expected MAJOR.MINOR.PATCH" in err
    bad.write_text(PUBLISH_TEMPLATE.replace("[vm]", '[output]\nformats = ["raw"]\n[vm]'))
    assert main(["validate", str(bad)]) == 2
    assert 'add "vhd" to output.formats' in capsys.readouterr().err


def _step_context(azurite: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                  name: str, blob: str, force: bool = False) -> BuildContext:
    """A build's context for the publish step: a template named and publishing into the
    new container `name` (as `blob`); the output directory is tmp_path/out."""
    from builder.context import BuildContext, BuildOptions
    from builder.template import load_template
    from distros import resolve

    _container(azurite, name)
    monkeypatch.setenv(CONNECTION_STRING_ENV, azurite.connection_string)
    template = tmp_path / f"{name}.toml"
    template.write_text(
        f'name = "{name}"\n[source]\ndisk_image = "base.qcow2"\n'
        '[distro]\nname = "debian"\nversion = "12"\n'
        f'[[publish]]\ntype = "azure-page-blob"\ncontainer_url = "{azurite.account_url}/{name}"\n'
        f'blob = "{blob}"\n')
    return BuildContext(loaded=load_template(template), options=BuildOptions(force=force),
                        distro=resolve("debian", "12"), uri="qemu:///session",
                        output_dir=tmp_path / "out", build_id="t", work_dir=tmp_path)


def test_the_build_step_publishes_and_the_manifest_records_it(
    azurite: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The publish step as a build runs it after the check, with the manifest it writes;
    the VM part of the build is not needed for it (tests/e2e has the whole build)."""
    from contextlib import ExitStack

    from builder.report.check_report import Report
    from builder.steps import export, step_list
    from builder.steps.publish import PublishFailed, publish

    out = tmp_path / "out"
    out.mkdir()
    image = out / "stepped.vhd"
    data = make_sparse_vhd(image, 64 * MiB, 8 * MiB, extent=4 * MiB, zero_extent=MiB)
    ctx = _step_context(azurite, tmp_path, monkeypatch, "stepped", "stepped-1.vhd")
    loaded = ctx.loaded
    names = [name for name, _ in step_list(ctx)]
    assert names[-4:] == ["check", "simulate", "publish", "manifest"]
    ctx.artifacts["vhd"] = image
    ctx.report = Report(str(image))  # the check step passed (no failure)
    with ExitStack() as stack:
        publish(ctx, stack)
        export.write_manifest(ctx, stack)
    [record] = json.loads((out / "manifest.json").read_text())["publish"]
    assert record["url"] == f"{azurite.account_url}/stepped/stepped-1.vhd"
    assert record["bytes_sent"] == data + PAGE
    assert record["bytes_sent"] + record["bytes_skipped"] == image.stat().st_size
    assert record["duration_seconds"] > 0 and record["resources"] == []
    # A failing entry: the manifest still says what happened, the image stays.
    broken = loaded.template.model_copy(update={"publish": [
        loaded.template.publish[0].model_copy(
            update={"container_url": f"{azurite.account_url}/no-such-container"})]})
    ctx.loaded = type(loaded)(**{**loaded.__dict__, "template": broken})
    ctx.published.clear()
    with pytest.raises(PublishFailed, match="container does not exist") as failed, \
            ExitStack() as stack:
        publish(ctx, stack)
    # As the pipeline does for every failed build (work_dir.keep_outputs).
    from builder.manifest import write_manifest
    from builder.work_dir import failure_of

    ctx.step = "publish"
    write_manifest(ctx, failure_of(ctx, failed.value), ["build.log"])
    written = json.loads((out / "manifest.json").read_text())
    assert written["status"] == "failed" and written["failure"]["step"] == "publish"
    [record] = written["publish"]
    assert "container does not exist" in record["error"]
    assert image.exists()


def test_the_build_step_reuses_the_manifests_digest_of_an_unchanged_image(
    azurite: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the export step hashed is not hashed again while the file's stamp (size,
    mtime, ctime, inode) is the one hashed; a changed file is hashed again."""
    from contextlib import ExitStack

    import builder.publish.blob
    import builder.steps.publish
    from builder.image.digest import BackgroundDigests
    from builder.report.check_report import Report
    from builder.steps.publish import publish

    hashed_here: list[Path] = []

    def counting_sha256(path: Path) -> str:
        hashed_here.append(path)
        return sha256_file(path)

    monkeypatch.setattr(builder.publish.blob, "sha256_file", counting_sha256)
    monkeypatch.setattr(builder.steps.publish, "sha256_file", counting_sha256)

    out = tmp_path / "out"
    out.mkdir()
    image = out / "reused.vhd"
    make_sparse_vhd(image, 64 * MiB, 4 * MiB, extent=4 * MiB, zero_extent=MiB)
    ctx = _step_context(azurite, tmp_path, monkeypatch, "reused", "reused.vhd", force=True)
    ctx.artifacts["vhd"] = image
    ctx.report = Report(str(image))
    ctx.digests = BackgroundDigests(ctx.artifacts, vhd_holds_raw=True)
    hashed = ctx.digests.wait()[image].sha256
    assert hashed == sha256_file(image)

    def change_a_byte(mask: int) -> None:
        with open(image, "r+b") as f:
            f.seek(MiB)
            byte = f.read(1)
            f.seek(MiB)
            f.write(bytes([byte[0] ^ mask]))

    stat = image.stat()
    with ExitStack() as stack:
        publish(ctx, stack)
    assert ctx.published[-1]["sha256"] == hashed and hashed_here == []

    # A byte changed with the mtime put back (what `touch -r` hides): ctime still moves,
    # and the step hashes the file again.
    change_a_byte(0xFF)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    ctx.published.clear()
    with ExitStack() as stack:
        publish(ctx, stack)
    assert ctx.published[-1]["sha256"] == sha256_file(image) != hashed
    assert hashed_here == [image]
