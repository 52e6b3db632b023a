"""The application database: snapshot, migrate, restore."""
