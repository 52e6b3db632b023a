"""Transports run the application's processes on its hosts: `local` (this machine) and `ssh`.

deployctl/fleet/versions.py picks one from the playbook's `deploy.transport`.
"""
