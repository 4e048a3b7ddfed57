"""Every mistake a template author can make: exit 2, the file, the key path, what was expected
and what was found, every problem at once, and never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from builder.cli import main

REPO = Path(__file__).resolve().parent.parent
AZBUILD = Path(sys.executable).parent / "azbuild"
SHA = "a" * 64

BASE = f"""\
name = "demo"

[source]
iso = "https://example.org/demo.iso"
checksum = "sha256:{SHA}"

[distro]
name = "rocky"
version = "9"
"""
NO_SOURCE = BASE[: BASE.index("[source]")] + BASE[BASE.index("[distro]"):]


@dataclass
class Case:
    """A bad template: `files` are written into a directory; t.toml is the one validated."""

    id: str
    files: dict[str, str | bytes]
    expect: list[str]
    args: list[str] = field(default_factory=list)
    named: str | None = "t.toml"  # the file the message must name (None: a command-line mistake)
    env: dict[str, str] = field(default_factory=dict)


CASES = [
    Case("toml-syntax-error", {"t.toml": 'name = "demo"\n[vm\ncpus = 2\n'},
         ["line 2, column 4", "TOML syntax error", "expected ']' at the end of a table",
          "found the end of the line"]),
    Case("toml-missing-value", {"t.toml": BASE + "[vm]\ncpus = \n"},
         ["line 11, column 8", "TOML syntax error", "invalid value",
          "found the end of the line"]),
    Case("toml-duplicate-key", {"t.toml": BASE + '[vm]\ncpus = 2\ncpus = 3\n'},
         ["line 12, column 9", "TOML syntax error", "cannot overwrite a value"]),
    Case("toml-unclosed-string", {"t.toml": 'name = "demo\n'},
         ["line 1, column 13", "TOML syntax error", "illegal character",
          "found the end of the line"]),
    Case("toml-bad-char", {"t.toml": 'name = demo\n'},
         ["line 1, column 8", "TOML syntax error", "invalid value", "found 'd'"]),
    Case("empty-file", {"t.toml": "\n  \n"}, ["the file is empty", "name, source and distro"]),
    Case("binary-file", {"t.toml": b"\x7fELF\x02\x01\x00\x00"}, ["not a TOML file", "binary"]),
    Case("invalid-utf8", {"t.toml": b'name = "caf\xe9"\n'}, ["invalid UTF-8 at byte 11"]),
    Case("unknown-top-level-key", {"t.toml": 'colour = "blue"\n' + BASE},
         ["colour: unknown key"]),
    Case("unknown-nested-key", {"t.toml": BASE + "[vm]\ncpu = 2\n"}, ["vm.cpu: unknown key"]),
    Case("wrong-type", {"t.toml": BASE + '[vm]\ncpus = "many"\n'},
         ["vm.cpus: expected a valid integer", "found 'many'"]),
    Case("table-where-value-expected", {"t.toml": BASE + "[vm.memory]\nsize = 2\n"},
         ["vm.memory: expected a size such as '30GiB'"]),
    Case("cpus-out-of-range", {"t.toml": BASE + "[vm]\ncpus = 0\n"},
         ["vm.cpus: expected greater than or equal to 1", "found the number 0"]),
    Case("bad-size-unit", {"t.toml": BASE + '[vm]\nmemory = "2GiX"\n'},
         ["vm.memory: unknown size unit 'GiX'", "use B, KiB, MiB, GiB or TiB"]),
    Case("negative-size", {"t.toml": BASE + '[vm]\ndisk_size = "-5GiB"\n'},
         ["vm.disk_size: a size cannot be negative, found '-5GiB'"]),
    Case("disk-under-20MiB", {"t.toml": BASE + '[vm]\ndisk_size = "19MiB"\n'},
         ["vm.disk_size: disk_size must be at least 20MiB", "found '19MiB'"]),
    Case("memory-too-small", {"t.toml": BASE + '[vm]\nmemory = "128MiB"\n'},
         ["vm.memory: memory must be at least 256MiB"]),
    Case("zero-timeout", {"t.toml": BASE + '[communicator]\ntimeout = "0s"\n'},
         ["line 11: communicator.timeout: a timeout of 0 would end the wait at once"]),
    Case("bad-duration", {"t.toml": BASE + '[install]\ntimeout = "45 minutes"\n'},
         ["install.timeout: expected a duration such as '45m'", "found '45 minutes'"]),
    Case("bad-enum-firmware", {"t.toml": BASE + '[vm]\nfirmware = "efi"\n'},
         ["vm.firmware: expected one of 'bios' or 'uefi', found 'efi'"]),
    Case("unknown-distro", {"t.toml": BASE.replace('"rocky"', '"slackware"')},
         ["distro.name: unknown distro 'slackware'; supported: ", "centos", "debian",
          "opensuse-leap", "ubuntu"]),
    Case("unknown-distro-version", {"t.toml": BASE.replace('version = "9"', 'version = "7"')},
         ["distro.version: unsupported Rocky Linux version '7'; supported: 8, 9"]),
    Case("distro-version-as-a-float", {"t.toml": BASE.replace('version = "9"', "version = 8.10")},
         ["distro.version: expected the version as a string", "found the number 8.1"]),
    Case("missing-required-table", {"t.toml": BASE[: BASE.index("[distro]")]},
         ["distro: required key is missing"]),
    Case("bad-name", {"t.toml": BASE.replace('name = "demo"', 'name = "my image!"')},
         ["name: expected 1 to 63 letters", "found 'my image!'"]),
    Case("both-iso-and-disk-image",
         {"t.toml": BASE.replace("[distro]", 'disk_image = "base.qcow2"\n[distro]')},
         ["source: set exactly one of `iso` or `disk_image`"]),
    Case("neither-iso-nor-disk-image", {"t.toml": NO_SOURCE + "[source]\n"},
         ["source: set exactly one of `iso` or `disk_image`"]),
    Case("iso-without-checksum",
         {"t.toml": BASE.replace(f'checksum = "sha256:{SHA}"\n', "")},
         ["source: `checksum` is required with `iso`"]),
    Case("bad-checksum-syntax", {"t.toml": BASE.replace(SHA, "abc123")},
         ["source.checksum: expected 'sha256:<64 hex digits>'", "found 'sha256:abc123'"]),
    Case("unknown-provisioner-type",
         {"t.toml": BASE + '[[provision]]\ntype = "ansible"\nplaybook = "x.yml"\n'},
         ["provision[0]: unknown provisioner type; expected 'shell', 'file' or 'reboot'",
          "found 'ansible'"]),
    Case("provisioner-without-type", {"t.toml": BASE + '[[provision]]\ninline = ["true"]\n'},
         ["provision[0]: a provisioner needs `type`"]),
    Case("shell-inline-and-script",
         {"t.toml": BASE + '[[provision]]\ntype = "shell"\ninline = ["true"]\nscript = "s.sh"\n',
          "s.sh": "true\n"},
         ["provision[0]: a shell provisioner needs exactly one of `inline` or `script`"]),
    Case("bad-file-mode",
         {"t.toml": BASE + '[[provision]]\ntype = "file"\nsource = "f"\ndestination = "/f"\n'
          'mode = "0999"\n', "f": ""},
         ["provision[0].mode: expected an octal file mode such as '0644', found '0999'"]),
    Case("unknown-key-in-second-provisioner",
         {"t.toml": BASE + '[[provision]]\ntype = "reboot"\n[[provision]]\ntype = "reboot"\n'
          'wait = "1m"\n'},
         ["provision[1].wait: unknown key"]),
    Case("missing-provisioner-script",
         {"t.toml": BASE + '[[provision]]\ntype = "shell"\nscript = "scripts/setup.sh"\n'},
         ["provision[0].script: file not found:", "scripts/setup.sh"]),
    Case("missing-file-provisioner-source",
         {"t.toml": BASE + '[[provision]]\ntype = "file"\nsource = "motd"\n'
          'destination = "/etc/motd"\n'},
         ["provision[0].source: file not found:", "/motd"]),
    Case("unknown-requirement-in-skip", {"t.toml": BASE + '[azure]\nskip = { R99 = "no" }\n'},
         ["azure.skip: unknown requirement 'R99'; expected one of R01 to R15"]),
    Case("skip-without-reason", {"t.toml": BASE + '[azure]\nskip = { R10 = " " }\n'},
         ["azure.skip: skipping R10 needs a reason"]),
    Case("undefined-variable", {"t.toml": BASE.replace('"https://example.org/demo.iso"',
                                                       '"${var.iso}"')},
         ["source.iso: undefined variable 'iso' (declared: none)"]),
    Case("unknown-reference", {"t.toml": BASE.replace('"demo"', '"${nme}"', 1)},
         ["name: unknown reference ${nme}",
          "use ${var.NAME}, ${env.NAME}, ${build.date}, ${build.timestamp}, ${build.id} or ${name}"
          ]),
    Case("shell-variable-in-an-inline-command",
         {"t.toml": BASE + '[[provision]]\ntype = "shell"\ninline = ["echo ${HOME}"]\n'},
         ["provision[0].inline[0]: unknown reference ${HOME}",
          "for the shell's own ${HOME}, write $${HOME}"]),
    Case("unclosed-reference", {"t.toml": BASE.replace('"demo"', '"demo-${var.tag"', 1)},
         ["line 1: name: a reference `${` is not closed with `}`", "write `$${`"]),
    Case("unknown-build-variable", {"t.toml": BASE.replace('"demo"', '"demo-${build.day}"', 1)},
         ["name: unknown build variable ${build.day}"]),
    Case("json-var-file-syntax", {"t.toml": BASE, "vars.json": '{"a": 1,}'},
         ["vars.json: line 1, column 9: JSON syntax error"],
         args=["--var-file", "vars.json"], named="vars.json"),
    Case("environment-variable-of-the-wrong-type", {"t.toml": BASE + "[variables]\nn = 1\n"},
         ["AZBUILD_VAR_n: expected an integer (the type of the declared default 1), found 'one'"],
         env={"AZBUILD_VAR_n": "one"}, named=None),
    Case("unset-env-var", {"t.toml": BASE + '[install]\nlocale = "${env.AZTEST_SURELY_UNSET}"\n'},
         ["install.locale: environment variable AZTEST_SURELY_UNSET is not set"]),
    Case("variable-without-value", {"t.toml": BASE + "[variables]\npw = { sensitive = true }\n"},
         ["variables.pw: no value; give it a default or pass --var pw=..."]),
    Case("bad-variable-table", {"t.toml": BASE + "[variables]\npw = { secret = true }\n"},
         ["line 11: variables.pw.secret: unknown key"]),
    Case("var-for-undeclared-variable", {"t.toml": BASE}, ["--var nope: no variable 'nope'"],
         args=["--var", "nope=1"]),
    Case("malformed-var", {"t.toml": BASE}, ["--var expects NAME=VALUE, found 'nope'"],
         args=["--var", "nope"], named=None),
    Case("missing-var-file", {"t.toml": BASE}, ["--var-file", "vars.toml: file not found"],
         args=["--var-file", "vars.toml"], named=None),
    Case("var-file-with-a-table", {"t.toml": BASE + "[variables]\nx = 1\n",
                                   "vars.toml": "[x]\ny = 1\n"},
         ["vars.toml: line 1: x: expected a plain value (text, number or boolean), found a table"],
         args=["--var-file", "vars.toml"], named="vars.toml"),
    Case("missing-layer", {"t.toml": 'extends = ["gen3"]\n' + BASE},
         ["extends: layer 'gen3' not found (searched", "chain:",
          "the layers there: cloud-init, gen2, small-vm; did you mean 'gen2'?"]),
    Case("missing-layer-file", {"t.toml": 'extends = ["layers/base.toml"]\n' + BASE},
         ["extends: layer 'layers/base.toml' not found (relative to"]),
    Case("cyclic-extends", {"t.toml": 'extends = ["a.toml"]\n' + BASE,
                            "a.toml": 'extends = ["b.toml"]\n', "b.toml": 'extends = ["a.toml"]\n'},
         ["extends: cycle:", "a.toml -> ", "b.toml -> ", "a.toml"], named="b.toml"),
    Case("extends-wrong-type", {"t.toml": "extends = 5\n" + BASE},
         ["extends: expected a list of layer names or paths"]),
    Case("error-in-a-layer-names-the-layer", {"t.toml": 'extends = ["base.toml"]\n' + BASE,
                                             "base.toml": "[vm]\ncpu = 4\n"},
         ["base.toml: line 2: vm.cpu: unknown key"], named="base.toml"),
    Case("empty-output-formats", {"t.toml": BASE + "[output]\nformats = []\n"},
         ["output.formats: expected at least 1 item, found a list"]),
    # pydantic's own words do not reach the user.
    Case("a-list-of-sources", {"t.toml": NO_SOURCE + '[[source]]\niso = "x.iso"\n'},
         ["source: expected a table, found a list"]),
    Case("a-list-as-a-path", {"t.toml": NO_SOURCE + '[source]\ndisk_image = ["x.raw"]\n'},
         ["source.disk_image: expected a path (text), found a list"]),
    Case("a-table-as-a-variable-default",
         {"t.toml": BASE + "[variables.x]\ndefault = { a = 1 }\n"},
         ["variables.x.default: expected text, a number or a boolean, found a table"]),
    Case("template-does-not-exist", {}, ["the template file does not exist"]),
    # Strict types: nothing is coerced between booleans, numbers and strings.
    Case("boolean-as-port", {"t.toml": BASE + "[communicator]\nport = true\n"},
         ["t.toml: line 11: communicator.port: expected a valid integer, found the boolean true"]),
    Case("boolean-as-cpus", {"t.toml": BASE + "[vm]\ncpus = true\n"},
         ["t.toml: line 11: vm.cpus: expected a valid integer, found the boolean true"]),
    Case("number-in-a-string-as-cpus", {"t.toml": BASE + '[vm]\ncpus = "4"\n'},
         ["line 11: vm.cpus: expected a valid integer, found '4'"]),
    Case("string-as-boolean",
         {"t.toml": BASE + '[[provision]]\ntype = "shell"\ninline = ["true"]\nsudo = "no"\n'},
         ["t.toml: line 13: provision[0].sudo: expected a valid boolean, found 'no'"]),
    Case("number-as-boolean", {"t.toml": BASE + "[azure.agent]\nenable_swap = 1\n"},
         ["line 11: azure.agent.enable_swap: expected a valid boolean, found the number 1"]),
    Case("number-as-string", {"t.toml": BASE + "[install]\nlocale = 5\n"},
         ["line 11: install.locale: expected a valid string, found the number 5"]),
    Case("integer-as-distro-version", {"t.toml": BASE.replace('version = "9"', "version = 9")},
         ['line 9: distro.version: expected the version as a string (version = "9")']),
    Case("decimal-size-unit", {"t.toml": BASE + '[vm]\ndisk_size = "10 GB"\n'},
         ["line 11: vm.disk_size: decimal unit 'GB' in '10 GB'", "did you mean 10GiB?",
          "Azure needs whole MiB"]),
    Case("decimal-size-unit-in-a-layer", {"t.toml": 'extends = ["base.toml"]\n' + BASE,
                                          "base.toml": '[vm]\n\nmemory = "2MB"\n'},
         ["base.toml: line 3: vm.memory: decimal unit 'MB'", "did you mean 2MiB?"],
         named="base.toml"),
    Case("unknown-key-close-to-a-known-one", {"t.toml": BASE + '[vm]\nfirmwear = "uefi"\n'},
         ["line 11: vm.firmwear: unknown key; did you mean 'firmware'?"]),
    Case("unknown-key-in-a-provisioner",
         {"t.toml": BASE + '[[provision]]\ntype = "shell"\ninlne = ["true"]\n'},
         ["line 12: provision[0].inlne: unknown key; did you mean 'inline'?"]),
    Case("unknown-top-level-table", {"t.toml": BASE + "[comunicator]\nport = 2222\n"},
         ["line 10: comunicator: unknown key; did you mean 'communicator'?"]),
    Case("unknown-key-in-an-inline-table",
         {"t.toml": BASE + "[azure]\nagent = { enable_swp = false }\n"},
         ["line 11: azure.agent.enable_swp: unknown key; did you mean 'enable_swap'?"]),
    Case("undefined-variable-close-to-a-declared-one",
         {"t.toml": BASE.replace('"https://example.org/demo.iso"', '"${var.iso_pth}"')
          + '[variables]\niso_path = "x.iso"\n'},
         ["line 4: source.iso: undefined variable 'iso_pth'; did you mean 'iso_path'?"]),
    Case("var-with-a-typo", {"t.toml": BASE + "[variables]\ncpus = 2\n"},
         ["--var cpu: no variable 'cpu'", "did you mean 'cpus'?"], args=["--var", "cpu=4"]),
    Case("var-not-of-the-declared-type",
         {"t.toml": BASE + '[variables]\ncpus = 2\n[vm]\ncpus = "${var.cpus}"\n'},
         ["--var cpus: expected an integer (the type of the declared default 2), found 'many'"],
         args=["--var", "cpus=many"], named=None),
    Case("variable-of-the-wrong-type",
         {"t.toml": BASE + '[variables]\nswap = "no"\n[azure.agent]\n'
          'enable_swap = "${var.swap}"\n'},
         ["line 13: azure.agent.enable_swap: expected a valid boolean, found 'no'"
          " (the value of ${var.swap})"]),
    # Values that used to fail only once the build had started (issue 11).
    Case("build-user-root", {"t.toml": BASE + '[communicator]\nusername = "root"\n'},
         ["line 11: communicator.username: expected a login name the deprovision can remove",
          "found 'root'"]),
    Case("build-user-with-shell",
         {"t.toml": BASE + '[communicator]\nusername = "x;touch /tmp/p;y"\n'},
         ["line 11: communicator.username:", "found 'x;touch /tmp/p;y'"]),
    Case("unquotable-kernel-argument",
         {"t.toml": BASE + "[azure]\nkernel_args_add = ['console=\"ttyS0\"']\n"},
         ["line 11: azure.kernel_args_add: kernel arguments go into the bootloader",
          "found 'console=\"ttyS0\"'"]),
    Case("unquotable-kernel-argument-removed",
         {"t.toml": BASE + '[azure]\nkernel_args_remove = ["quiet", "a b"]\n'},
         ["line 11: azure.kernel_args_remove:", "found 'a b'"]),
    # Added by the preparation, then wanted gone by the check: R07 could never pass.
    Case("kernel-arg-added-and-removed",
         {"t.toml": BASE + '[azure]\nkernel_args_add = ["console=ttyS0", "quiet"]\n'},
         ["line 10: azure: kernel_args_add and kernel_args_remove both hold 'quiet'",
          "drop it from one list"]),
    Case("kernel-arg-added-and-removed-both-given",
         {"t.toml": BASE + "[azure]\nkernel_args_add = ['console=ttyS0', 'nomodeset']\n"
          "kernel_args_remove = ['rhgb', 'nomodeset']\n"},
         ["both hold 'nomodeset'"]),
    Case("installer-kernel-argument-with-a-space",
         {"t.toml": BASE + '[install]\nkernel_args = ["inst.text", "a b"]\n'},
         ["line 11: install.kernel_args: each installer kernel argument is one word",
          "found 'a b'"]),
    Case("bad-module-name", {"t.toml": BASE + '[azure]\nhyperv_modules = ["hv vmbus"]\n'},
         ["line 11: azure.hyperv_modules: expected kernel module names", "found 'hv vmbus'"]),
    Case("bad-resource-disk-mount-point",
         {"t.toml": BASE + '[azure.agent]\nresource_disk_mount_point = "/mnt/my disk"\n'},
         ["line 11: azure.agent.resource_disk_mount_point: expected a plain absolute path",
          "found '/mnt/my disk'"]),
    Case("swap-size-not-whole-mib", {"t.toml": BASE + '[azure.agent]\nswap_size = "1536KiB"\n'},
         ["line 11: azure.agent.swap_size: waagent takes the swap size in whole MiB",
          "found 1572864 bytes (1.50MiB)"]),
    Case("host-key-file-with-an-iso",
         {"t.toml": BASE + '[communicator]\nhost_key_file = "host.pub"\n',
          "host.pub": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9"
                      "GKJl\n"},
         ["line 11: communicator.host_key_file: cannot be used with an ISO install"]),
    Case("cloud-init-on-rhel-6",
         {"t.toml": BASE.replace('"rocky"', '"rhel"').replace('"9"', '"6"')
          + '[azure]\nprovisioning = "cloud-init"\n'},
         ["line 11: azure.provisioning: cloud-init provisioning is not supported on"
          " Red Hat Enterprise Linux 6"]),
    Case("shell-env-name-with-a-dash",
         {"t.toml": BASE + '[[provision]]\ntype = "shell"\ninline = ["true"]\n'
          'env = { MY-VAR = "1" }\n'},
         ["line 13: provision[0].env: expected environment variable names", "found 'MY-VAR'"]),
    Case("directory-as-shell-script",
         {"t.toml": BASE + '[[provision]]\ntype = "shell"\nscript = "scripts"\n',
          "scripts/a.sh": ""},
         ["line 12: provision[0].script:", "scripts is a directory"]),
    Case("relative-file-provisioner-destination",
         {"t.toml": BASE + '[[provision]]\ntype = "file"\nsource = "motd"\n'
          'destination = "etc/motd"\n', "motd": "hi\n"},
         ["line 13: provision[0].destination: expected an absolute path in the guest",
          "found 'etc/motd'"]),
    Case("unknown-time-zone", {"t.toml": BASE + '[install]\ntimezone = "Europe/Atlantis"\n'},
         ["line 11: install.timezone: expected a time zone of the tz database",
          "found 'Europe/Atlantis'"]),
    Case("unknown-locale", {"t.toml": BASE + '[install]\nlocale = "en_UK.UTF-8"\n'},
         ["line 11: install.locale: expected a glibc locale", "found 'en_UK.UTF-8'"]),
    Case("locale-that-is-no-locale", {"t.toml": BASE + '[install]\nlocale = "English"\n'},
         ["line 11: install.locale: expected a glibc locale", "found 'English'"]),
    Case("unknown-keymap", {"t.toml": BASE + '[install]\nkeyboard = "uk"\n'},
         ["line 11: install.keyboard: expected an XKB keyboard layout", "found 'uk'"]),
    Case("answer-file-syntax-error",
         {"t.toml": BASE + '[install]\nanswer_file = "ks.cfg.j2"\n',
          "ks.cfg.j2": "text\n{% if uefi %}\nbootloader\n"},
         ["line 11: install.answer_file:", "ks.cfg.j2: answer-file template error at line 3"]),
    Case("answer-file-with-an-unknown-variable",
         {"t.toml": BASE + '[install]\nanswer_file = "ks.cfg.j2"\n',
          "ks.cfg.j2": "text\nuser --name={{ build_user }}\n"},
         ["line 11: install.answer_file:", "answer-file template error: 'build_user' is"
          " undefined", "available variables:"]),
    Case("private-key-file-that-is-no-key",
         {"t.toml": BASE + '[communicator]\nprivate_key_file = "id"\n', "id": "hello\n"},
         ["line 11: communicator.private_key_file: cannot read private key", "id"]),
    Case("checksum-file-without-the-iso",
         {"t.toml": BASE.replace(f'"sha256:{SHA}"', '"file:SHA256SUMS"'),
          "SHA256SUMS": f"{SHA}  other.iso\n"},
         ["line 5: source.checksum:", "demo.iso"]),
    Case("host-key-file-without-a-key",
         {"t.toml": NO_SOURCE + '[source]\ndisk_image = "base.raw"\n'
          '[communicator]\nhost_key_file = "host.pub"\n',
          "base.raw": b"\0" * 512, "host.pub": "# nothing here\n"},
         ["communicator.host_key_file: no public key in", "host.pub"]),
    # Files that hold no disk azbuild starts from, which used to pass for raw disks.
    *[Case(f"disk-image-that-is-{kind}",
           {"t.toml": NO_SOURCE + f'[source]\ndisk_image = "{name}"\n', name: data},
           ["line 7: source.disk_image:", f"/{name} is {what}", fix])
      for kind, name, data, what, fix in [
          ("xz", "disk.raw.xz", b"\xfd7zXZ\x00" + b"\0" * 506, "an xz-compressed file",
           "decompress it first"),
          ("vmdk", "disk.vmdk", b"KDMV" + b"\0" * 508, "a VMDK image",
           "qemu-img convert -O qcow2"),
          ("an-iso", "debian.iso", b"\0" * 0x8001 + b"CD001" + b"\0" * 2042,
           "an ISO 9660 image", "an installer ISO goes in source.iso"),
      ]],
    # A name becomes paths, the VM's name and the host name: no mask reaches those.
    Case("sensitive-variable-in-the-name",
         {"t.toml": BASE.replace('name = "demo"', 'name = "web-${var.tag}"')
          + '[variables]\ntag = { default = "s3cr3t", sensitive = true }\n'},
         ["line 1: name: uses the sensitive variable 'tag'", "cannot be masked"]),
    Case("sensitive-variable-in-the-output-directory",
         {"t.toml": BASE + '[variables]\ntag = { default = "s3cr3t", sensitive = true }\n'
          '[output]\ndirectory = "out/${var.tag}"\n'},
         ["output.directory: uses the sensitive variable 'tag'"]),
    Case("late-failures-at-once",
         {"t.toml": BASE + '[communicator]\nusername = "root"\n[install]\nkeyboard = "uk"\n'
          'timezone = "Mars/Olympus"\n'},
         ["(3 problems)", "communicator.username", "install.keyboard", "install.timezone"]),
    Case("two-errors-at-once",
         {"t.toml": BASE.replace('"rocky"', '"slackware"') + '[vm]\ncpus = "many"\n'},
         ["(2 problems)", "distro.name: unknown distro", "vm.cpus: expected a valid integer"]),
    Case("errors-in-two-layers-at-once",
         {"t.toml": 'extends = ["base.toml"]\n' + BASE + '[install]\ntimeout = "soon"\n',
          "base.toml": '[vm]\nfirmware = "efi"\n'},
         ["(2 problems)", "base.toml: line 2: vm.firmware", "t.toml: line 12: install.timeout"]),
]

# A handful go through the installed console script in a real process.
SUBPROCESS = {"toml-syntax-error", "unknown-nested-key", "cyclic-extends",
              "missing-provisioner-script", "two-errors-at-once", "unset-env-var",
              "string-as-boolean", "decimal-size-unit", "build-user-with-shell",
              "shell-env-name-with-a-dash"}


def _write(case: Case, directory: Path) -> Path:
    for name, content in case.files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return directory / "t.toml"


def _check(case: Case, directory: Path, code: int, out: str, err: str) -> None:
    assert code == 2, err
    assert "Traceback" not in out + err
    assert err.startswith("error: ")
    for expected in case.expect:
        assert expected in err, f"{expected!r} not in:\n{err}"
    if case.named:
        assert str(directory / case.named) in err or f"{case.named}:" in err


def test_there_are_enough_distinct_cases() -> None:
    assert len({c.id for c in CASES}) == len(CASES) >= 25


@pytest.mark.parametrize("case", [c for c in CASES if c.id not in SUBPROCESS], ids=lambda c: c.id)
def test_bad_template(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AZTEST_SURELY_UNSET", raising=False)
    template = _write(case, tmp_path)
    code = main(["validate", str(template), *case.args])
    out, err = capsys.readouterr()
    _check(case, tmp_path, code, out, err)


@pytest.mark.parametrize("case", [c for c in CASES if c.id in SUBPROCESS], ids=lambda c: c.id)
def test_bad_template_in_a_real_process(case: Case, tmp_path: Path) -> None:
    template = _write(case, tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "AZTEST_SURELY_UNSET"}
    proc = subprocess.run(
        [str(AZBUILD), "validate", str(template), *case.args],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60, check=False,
    )
    _check(case, tmp_path, proc.returncode, proc.stdout, proc.stderr)


def test_debug_shows_the_traceback_and_the_same_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = _write(CASES[0], tmp_path)
    assert main(["--debug", "validate", str(template)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert "TOML syntax error" in err


def test_every_template_is_checked_even_after_a_bad_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.toml").write_text(BASE + "[vm]\ncpu = 2\n")
    (tmp_path / "good.toml").write_text(BASE)
    assert main(["validate", str(tmp_path / "bad.toml"), str(tmp_path / "good.toml")]) == 2
    out, err = capsys.readouterr()
    assert f"{tmp_path / 'good.toml'}: valid (rocky 9)" in out
    assert "vm.cpu: unknown key" in err
