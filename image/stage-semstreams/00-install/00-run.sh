#!/bin/bash -e
# Install the agent by applying the fleet's Ansible role to the image's rootfs through the
# chroot connection (ansible/rootfs.yml): service user, versioned venv from the aarch64
# wheelhouse, config, units enabled (semstreams-firstboot and semstreams-edge), and the
# image sealed: no SSH host keys, empty machine-id, no agent state. pi-gen's export stage
# empties machine-id again; each device makes its own identity on first boot.
# SEMSTREAMS_* come from the config that ansible/image.yml writes.
"${SEMSTREAMS_ANSIBLE_PLAYBOOK:-ansible-playbook}" \
	-c community.general.chroot -i "${ROOTFS_DIR}," \
	"${SEMSTREAMS_REPO}/ansible/rootfs.yml" \
	-e "semstreams_wheelhouse=${SEMSTREAMS_WHEELHOUSE}"
rm -rf "${ROOTFS_DIR}/root/.ansible"
