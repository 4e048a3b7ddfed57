"""Disk images and the inputs they are made from: `fetch` and `download` get installer
ISOs and checksum files (retry policy, content-addressed cache), `verified` remembers
the digests of local files, `iso` finds the installer kernel and initrd in an ISO,
`initrd` appends files to an initrd and `initrd_list` lists one, `inputs` refuses a
truncated or corrupt source disk, `disk` does sparse copies and atomic outputs,
`vhd` and `convert` make fixed VHDs, and `digest` hashes the results cheaply."""
