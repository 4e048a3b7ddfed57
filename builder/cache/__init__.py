"""The stage cache: disk states kept after the install and after each provisioner marked
`cache = true`, so that a later build boots on the longest cached prefix of its chain.
`store` keeps the entries (content-addressed, read-only, verified, locked), `keys` says
what each stage's disk depends on, `chain` puts a build's disk on the cache as overlays
and reads it back as one raw disk, and `prune` lists and removes entries
(`azbuild cache list/prune`) without breaking a chain."""
