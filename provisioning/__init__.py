"""Technicians' scripts: site and device identity, credentials, bundles; the site-in-a-box demo."""
