// placeholder: the WebSocket client module is being written
