def unavailable_reason():
    return "not built yet"
