"""Gates: the checks that decide whether a release may go on."""
