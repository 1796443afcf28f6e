"""The app's screens: each is imported when it is first opened, not before the first frame."""
