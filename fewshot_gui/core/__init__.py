"""Everything that is not a widget. This package never imports Qt."""
