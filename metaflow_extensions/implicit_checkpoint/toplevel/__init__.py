toplevel = "toplevel"
