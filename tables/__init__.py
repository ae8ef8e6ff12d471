"""State kept in tables, as plain classes with no Faust in them (but `declarations`)."""
