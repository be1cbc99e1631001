"""The hub side of zero-touch provisioning: the device registry, credentials, enrolment API."""
