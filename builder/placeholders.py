"""What `render` shows where a build puts what it generates afresh (keys, the root
password's hash, the seed's instance-id, the SSH port). Its own module so that the
template's checks can render an answer file as `render` does without importing the plan,
which imports the template layer."""

from __future__ import annotations

# Valid in every answer file.
PLACEHOLDER_HOST_PRIVATE = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "(the engine generates the guest's ed25519 host key at build time)\n"
    "-----END OPENSSH PRIVATE KEY-----"
)
PLACEHOLDER_HOST_PUBLIC = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI0000000000000000000000000000000000000000000"
    " azbuild-host-key"
)
PLACEHOLDER_CLIENT_PUBLIC = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI1111111111111111111111111111111111111111111"
    " azbuild-build-key"
)
# A SHA-512 crypt hash in form only: the build hashes install.root_password with a fresh salt.
PLACEHOLDER_PASSWORD_HASH = "$6$azbuild.render$" + ("hashed.at.build.time." * 5)[:86]
PLACEHOLDER_INSTANCE_ID = "azbuild-RENDER"
PLACEHOLDER_PORT = 2222
