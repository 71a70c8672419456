"""What people review with: the HTML report and its pictures, and Label Studio (the client,
push and pull)."""
