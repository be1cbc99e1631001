#!/bin/bash -e
# pi-gen: start this stage from the previous stage's rootfs (Raspberry Pi OS Lite).
if [ ! -d "${ROOTFS_DIR}" ]; then
	copy_previous
fi
