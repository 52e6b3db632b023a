"""Transports run the application's processes on its hosts: `local` (this machine) and `ssh`.

Each has a fleet (`LocalFleet` in local.py, `SshFleet` in ssh_fleet.py) that
deployctl/fleet/versions.py looks up by the playbook's `deploy.transport` in FLEETS.
"""
