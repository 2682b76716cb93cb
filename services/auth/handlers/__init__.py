"""Use-cases of the auth service: load -> decide (domain) -> store state and events in one transaction."""

from .context import Auth, Limits, Passwords, limit_key
from .credentials import audit, device_auth, issue_credential, revoke_credentials
from .sessions import bootstrap, change_password, login, logout, me
from .workspaces import (
    add_member,
    change_role,
    create_workspace,
    get_workspace,
    list_members,
    list_workspaces,
    remove_member,
    update_workspace,
)

__all__ = [
    "Auth",
    "Limits",
    "Passwords",
    "add_member",
    "audit",
    "bootstrap",
    "change_password",
    "change_role",
    "create_workspace",
    "device_auth",
    "get_workspace",
    "issue_credential",
    "limit_key",
    "list_members",
    "list_workspaces",
    "login",
    "logout",
    "me",
    "remove_member",
    "revoke_credentials",
    "update_workspace",
]
