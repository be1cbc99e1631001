"""Zero-touch provisioning: the device identity, hub discovery and enrolment."""
