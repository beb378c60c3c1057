// Command pixiecore is pixiecore, built from go.universe.tf/netboot at the
// version pinned in this directory's go.mod, for bootserve's side-by-side
// benchmark (bench/sidebyside). It is a separate module so that bootserve
// itself never depends on netboot; nothing here is vendored.
//
//	cd bench/pixiecore && go build -o /tmp/pixiecore .
package main

import (
	"go.universe.tf/netboot/out/ipxe"
	"go.universe.tf/netboot/pixiecore"
	"go.universe.tf/netboot/pixiecore/cli"
)

func main() {
	// The iPXE builds pixiecore ships embedded, registered the way its own
	// command does, so this binary behaves like a user's pixiecore.
	for fw, asset := range map[pixiecore.Firmware]string{
		pixiecore.FirmwareX86PC:   "third_party/ipxe/src/bin/undionly.kpxe",
		pixiecore.FirmwareEFI32:   "third_party/ipxe/src/bin-i386-efi/ipxe.efi",
		pixiecore.FirmwareEFI64:   "third_party/ipxe/src/bin-x86_64-efi/ipxe.efi",
		pixiecore.FirmwareEFIBC:   "third_party/ipxe/src/bin-x86_64-efi/ipxe.efi",
		pixiecore.FirmwareX86Ipxe: "third_party/ipxe/src/bin/ipxe.pxe",
	} {
		cli.Ipxe[fw] = ipxe.MustAsset(asset)
	}
	cli.CLI()
}
