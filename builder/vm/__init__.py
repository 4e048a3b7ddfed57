"""Running guests: everything between azbuild and a VM it starts. `libvirt` writes domain
XML (pure functions) and runs the domains, `accel` chooses KVM or TCG, `appliance` starts
libguestfs on that choice, `guest` starts a build's domain and opens its SSH session,
`ssh` and `keys` are the session and the keys it pins, `serial` follows the console,
`seed` and `volume` make the labelled volumes (CIDATA, OEMDRV) a guest reads at boot,
and `qemu_img` builds qemu-img command lines."""
