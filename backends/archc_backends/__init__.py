"""The backend plugins that ship with archc (torch, keras)."""
