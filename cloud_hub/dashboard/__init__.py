"""The hub's dashboard: the fleet at a glance, served at ``/`` beside the API."""
