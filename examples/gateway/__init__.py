"""The gateway example: an event processor behind brpc's HTTP gateway."""
