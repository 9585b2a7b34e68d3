{
  "targets": [
    {
      "target_name": "restartpoint_fec",
      "sources": ["fec.c"],
      "cflags": ["-std=gnu11", "-O3", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "libraries": ["-ldl"]
    }
  ]
}
