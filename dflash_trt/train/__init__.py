"""DFlash drafter training: cached target features, random-anchor block masks, position-decayed loss."""
