"""The uncompressed kernel (an ELF file) inside a Debian kernel image (`vmlinuz`, a bzImage
whose payload is xz-compressed), for QEMU to boot directly: `extract-vmlinux.py VMLINUZ OUT`.
The kernel's own scripts/extract-vmlinux does the same and is not packaged here."""

import lzma
import sys

XZ_MAGIC = b"\xfd7zXZ\x00"


def main(vmlinuz, out):
    data = open(vmlinuz, "rb").read()
    at = data.find(XZ_MAGIC)
    while at >= 0:
        try:
            kernel = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[at:])
        except lzma.LZMAError:
            kernel = b""
        if kernel[:4] == b"\x7fELF":
            with open(out, "wb") as f:
                f.write(kernel)
            return
        at = data.find(XZ_MAGIC, at + 1)
    sys.exit("extract-vmlinux.py: no xz-compressed ELF kernel in " + vmlinuz)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
