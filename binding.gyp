{
  "targets": [
    {
      "target_name": "ring",
      "sources": [
        "native/ring/addon.cc",
        "native/ring/socket.cc",
        "native/ring/memory.cc",
        "native/ring/eventfd.cc",
        "native/ring/thread.cc",
        "native/ring/uring.cc",
        "native/ring/blockio.cc",
        "native/ring/tap.cc",
        "native/ring/iovecs.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS", "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra", "-fno-exceptions"],
      "libraries": ["-luring"]
    }
  ]
}
