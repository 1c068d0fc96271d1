/*
 * proc_status.h - what the C test hosts read from /proc/self/status (Linux).
 */
#ifndef DCGGUF_TESTS_PROC_STATUS_H
#define DCGGUF_TESTS_PROC_STATUS_H

#include <stdio.h>

/* The process's thread count ("Threads:" in /proc/self/status); -1 if unknown. */
static long thread_count(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL) {
        return -1;
    }
    char line[256];
    long n = -1;
    while (fgets(line, sizeof line, f) != NULL) {
        if (sscanf(line, "Threads: %ld", &n) == 1) {
            break;
        }
    }
    fclose(f);
    return n;
}

#endif
