"""Money safety: the journal of intent, the reaper outside pytest, deletes that finish or
fail loudly, and the sweep by tag (see DESIGN.md, "Money and safety")."""
