/* A stalled disk for one process, through LD_PRELOAD: interposes the calls
 * that make written data durable (fsync, fdatasync, sync_file_range, syncfs,
 * sync) and, while the file $HAMAIL_STALL_TRIGGER exists, makes every such
 * call on a file under $HAMAIL_STALL_DIR wait until the trigger is removed.
 * Nothing that needs one of those syncs can finish meanwhile, so a server
 * that acknowledges a write during the stall acknowledged it without making
 * it durable. Every call on a file under the directory is written to
 * $HAMAIL_STALL_LOG as one line, "<sync|stall|resume> <call> <path>", so the
 * test can prove the shim sits on the real path (the WAL sync) and is not
 * passing vacuously.
 *
 * Built by tests/tests/durability.rs with `cc -shared -fPIC ... -ldl`. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char dir[PATH_MAX];
static size_t dir_len;
static char trigger[PATH_MAX];
static int log_fd = -1;

/* Read once, before main: getenv is not safe in a multi-threaded process
 * once anything might call setenv. */
__attribute__((constructor)) static void stall_init(void) {
    const char *d = getenv("HAMAIL_STALL_DIR");
    const char *t = getenv("HAMAIL_STALL_TRIGGER");
    const char *l = getenv("HAMAIL_STALL_LOG");
    if (d != NULL && strlen(d) < sizeof dir) {
        strcpy(dir, d);
        dir_len = strlen(dir);
        while (dir_len > 1 && dir[dir_len - 1] == '/')
            dir[--dir_len] = '\0';
    }
    if (t != NULL && strlen(t) < sizeof trigger)
        strcpy(trigger, t);
    if (l != NULL)
        log_fd = open(l, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
}

/* The path behind `fd`, if it lies under the watched directory. */
static int watched(int fd, char *path, size_t size) {
    char link[64];
    if (dir_len == 0)
        return 0;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, size - 1);
    if (n < 0)
        return 0;
    path[n] = '\0';
    return strncmp(path, dir, dir_len) == 0 &&
           (path[dir_len] == '/' || path[dir_len] == '\0');
}

static void note(const char *what, const char *call, const char *path) {
    char line[PATH_MAX + 64];
    if (log_fd < 0)
        return;
    int n = snprintf(line, sizeof line, "%s %s %s\n", what, call, path);
    if (n > 0) {
        /* One write per line with O_APPEND: lines of concurrent threads do
         * not interleave. Nothing to do if the log cannot be written. */
        ssize_t w = write(log_fd, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
        (void)w;
    }
}

static int stalled(void) {
    return trigger[0] != '\0' && access(trigger, F_OK) == 0;
}

/* Called before the real sync of a watched file: waits out the stall. */
static void gate(const char *call, const char *path) {
    if (!stalled()) {
        note("sync", call, path);
        return;
    }
    note("stall", call, path);
    struct timespec tick = {0, 10 * 1000 * 1000};
    while (stalled())
        nanosleep(&tick, NULL);
    note("resume", call, path);
}

static void *resolve(const char *name) {
    void *f = dlsym(RTLD_NEXT, name);
    if (f == NULL) {
        /* Without the real call the process would lose durability
         * silently: fail loudly instead. */
        static const char msg[] = "sync_stall: dlsym failed\n";
        ssize_t w = write(2, msg, sizeof msg - 1);
        (void)w;
        abort();
    }
    return f;
}

/* The next definition of `name`, looked up once (threads may race to look
 * it up; they find the same pointer). */
static void *real(void **slot, const char *name) {
    void *f = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
    if (f == NULL) {
        f = resolve(name);
        __atomic_store_n(slot, f, __ATOMIC_RELEASE);
    }
    return f;
}

int fsync(int fd) {
    static void *slot;
    char path[PATH_MAX];
    int (*next)(int) = (int (*)(int))real(&slot, "fsync");
    if (watched(fd, path, sizeof path))
        gate("fsync", path);
    return next(fd);
}

int fdatasync(int fd) {
    static void *slot;
    char path[PATH_MAX];
    int (*next)(int) = (int (*)(int))real(&slot, "fdatasync");
    if (watched(fd, path, sizeof path))
        gate("fdatasync", path);
    return next(fd);
}

int sync_file_range(int fd, off_t offset, off_t nbytes, unsigned int flags) {
    static void *slot;
    char path[PATH_MAX];
    int (*next)(int, off_t, off_t, unsigned int) =
        (int (*)(int, off_t, off_t, unsigned int))real(&slot, "sync_file_range");
    if (watched(fd, path, sizeof path))
        gate("sync_file_range", path);
    return next(fd, offset, nbytes, flags);
}

int syncfs(int fd) {
    static void *slot;
    char path[PATH_MAX];
    int (*next)(int) = (int (*)(int))real(&slot, "syncfs");
    if (watched(fd, path, sizeof path))
        gate("syncfs", path);
    return next(fd);
}

void sync(void) {
    static void *slot;
    void (*next)(void) = (void (*)(void))real(&slot, "sync");
    if (dir_len > 0)
        gate("sync", dir);
    next();
}
