// ctnet's CNI plugin executable: a small client of the ctnet daemon (ctnetd).
//
// A runtime execs the plugin for every VERSION, ADD, DEL, ...; starting Node for each costs more
// than the work itself, so this client only answers VERSION, finds the daemon's socket under the
// state directory, starts the daemon when there is none, and relays the request and the reply.
// Everything else (parsing the config, the engine) lives in the daemon (src/daemon/, src/cni/).
//
// Wire format (see src/daemon/wire.ts): request = "KEY=VALUE\0"... "\0" then stdin, then the client
// shuts down its write side; reply = "EXIT\nSTDOUT_LENGTH\n" STDOUT STDERR, then the daemon closes.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef CTNET_DEFAULT_BIN
#define CTNET_DEFAULT_BIN "/usr/local/bin/ctnet"
#endif
#define DEFAULT_STATE_DIR "/var/lib/ctnet"
// The JSON list of versions ctnet speaks, passed in by the build from src/cni/protocol.ts.
#ifndef SUPPORTED_VERSIONS
#error "build with -DSUPPORTED_VERSIONS='[...]' (ctnet cni install does)"
#endif
#define START_TIMEOUT_MS 20000

extern char **environ;

struct buf {
  char *data;
  size_t len, cap;
};

static void append(struct buf *b, const void *p, size_t n) {
  if (b->len + n + 1 > b->cap) {
    b->cap = (b->len + n + 1) * 2;
    b->data = realloc(b->data, b->cap);
    if (!b->data) abort();
  }
  memcpy(b->data + b->len, p, n);
  b->len += n;
  b->data[b->len] = 0;
}

static int read_all(int fd, struct buf *b) {
  char chunk[65536];
  for (;;) {
    ssize_t n = read(fd, chunk, sizeof chunk);
    if (n == 0) return 0;
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    append(b, chunk, (size_t)n);
  }
}

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

// Prints a CNI error ({cniVersion, code, msg, details}) on stdout and exits 1.
static void fail(const char *version, int code, const char *msg, const char *details) {
  json_t *e = json_pack("{s:s, s:i, s:s, s:s}", "cniVersion", version, "code", code, "msg", msg, "details", details);
  char *s = json_dumps(e, JSON_COMPACT);
  printf("%s\n", s);
  exit(1);
}

static const char *config_string(json_t *conf, const char *key) {
  json_t *v = conf ? json_object_get(conf, key) : NULL;
  return json_is_string(v) ? json_string_value(v) : NULL;
}

static long now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000L + t.tv_nsec / 1000000L;
}

static int try_connect(const char *path) {
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof addr.sun_path) return -2;
  strcpy(addr.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0) return fd;
  close(fd);
  return -1;
}

// Starts `ctnet daemon --state-dir DIR` detached (its own session, output to DIR/ctnetd.log).
// Several clients may race here: the daemon takes a lock, and the losers exit at once.
// Returns 0, or the errno of an exec that failed (reported through a close-on-exec pipe).
static int start_daemon(const char *bin, const char *dir) {
  char log[PATH_MAX];
  snprintf(log, sizeof log, "%s/ctnetd.log", dir);
  mkdir(dir, 0700);
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) return errno;
  pid_t pid = fork();
  if (pid < 0) return errno;
  if (pid == 0) {
    close(p[0]);
    if (fork() != 0) _exit(0); // the grandchild is re-parented, so nobody waits for it
    setsid();
    int in = open("/dev/null", O_RDONLY);
    int out = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (in >= 0) dup2(in, 0);
    if (out >= 0) {
      dup2(out, 1);
      dup2(out, 2);
    }
    // Runtimes may exec plugins with a bare environment; the daemon runs ip, nft and conntrack.
    setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 0);
    execl(bin, bin, "daemon", "--state-dir", dir, (char *)NULL);
    int err = errno;
    dprintf(2, "ctnet-cni: cannot start %s: %s\n", bin, strerror(err));
    (void)!write(p[1], &err, sizeof err);
    _exit(127);
  }
  close(p[1]);
  waitpid(pid, NULL, 0);
  int err = 0;
  ssize_t n;
  while ((n = read(p[0], &err, sizeof err)) < 0 && errno == EINTR) {
  }
  close(p[0]);
  return n == (ssize_t)sizeof err ? err : 0;
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  struct buf in = {0};
  if (read_all(0, &in) < 0) fail("1.1.0", 5, "cannot read the network configuration from stdin", strerror(errno));
  const char *command = getenv("CNI_COMMAND");

  json_error_t jerr;
  json_t *conf = in.len ? json_loadb(in.data, in.len, 0, &jerr) : NULL;
  const char *version = config_string(conf, "cniVersion");
  if (!version) version = "1.1.0";
  if (command && strcmp(command, "VERSION") == 0) {
    // Never needs the daemon: runtimes ask this for every plugin, before nearly every command.
    printf("{\"cniVersion\":%s,\"supportedVersions\":" SUPPORTED_VERSIONS "}\n", json_dumps(json_string(version), JSON_ENCODE_ANY));
    return 0;
  }
  if (in.len && !conf) {
    char msg[512];
    snprintf(msg, sizeof msg, "the network configuration on stdin is not valid JSON: %s (line %d, column %d)", jerr.text, jerr.line, jerr.column);
    fail(version, 6, msg, "pass the plugin configuration as a JSON object on stdin");
  }

  const char *dir = getenv("CTNET_STATE_DIR");
  if (!dir || !*dir) dir = config_string(conf, "stateDir");
  if (!dir || !*dir) dir = DEFAULT_STATE_DIR;
  const char *bin = config_string(conf, "ctnetBin");
  if (!bin) bin = getenv("CTNET_BIN");
  if (!bin) bin = CTNET_DEFAULT_BIN;
  char sock[PATH_MAX];
  snprintf(sock, sizeof sock, "%s/ctnetd.sock", dir);

  // The request: the CNI_* environment, the client's network namespace, then stdin.
  struct buf req = {0};
  for (char **e = environ; *e; e++) {
    if (strncmp(*e, "CNI_", 4) == 0) append(&req, *e, strlen(*e) + 1);
  }
  char ns[128] = "";
  ssize_t nl = readlink("/proc/self/ns/net", ns, sizeof ns - 1);
  if (nl > 0) {
    ns[nl] = 0;
    char entry[160];
    int n = snprintf(entry, sizeof entry, "CTNET_CLIENT_NETNS=%s", ns);
    append(&req, entry, (size_t)n + 1);
  }
  append(&req, "", 1);
  append(&req, in.data ? in.data : "", in.len);

  int fd = try_connect(sock);
  if (fd == -2) fail(version, 4, "the state directory path is too long for a unix socket", dir);
  if (fd < 0) {
    int err = start_daemon(bin, dir);
    if (err) {
      char msg[PATH_MAX + 128];
      snprintf(msg, sizeof msg, "ctnetd is not running for %s and cannot be started: %s: %s", dir, bin, strerror(err));
      fail(version, command && strcmp(command, "STATUS") == 0 ? 50 : 11, msg,
           "set ctnetBin in the network configuration (or CTNET_BIN) to the ctnet executable; ctnet cni install writes it");
    }
    long deadline = now_ms() + START_TIMEOUT_MS;
    useconds_t pause = 2000;
    while ((fd = try_connect(sock)) < 0 && now_ms() < deadline) {
      usleep(pause);
      if (pause < 50000) pause *= 2;
    }
  }
  if (fd < 0) {
    char msg[PATH_MAX + 128], details[PATH_MAX + 128];
    snprintf(msg, sizeof msg, "ctnetd is not running for %s and did not start within %d s", dir, START_TIMEOUT_MS / 1000);
    snprintf(details, sizeof details, "see %s/ctnetd.log; ctnetd is started as \"%s daemon\" (set ctnetBin in the config or CTNET_BIN)", dir, bin);
    fail(version, command && strcmp(command, "STATUS") == 0 ? 50 : 11, msg, details);
  }
  if (write_all(fd, req.data, req.len) < 0) fail(version, 11, "ctnetd closed the connection while receiving the request", "try again");
  shutdown(fd, SHUT_WR);
  struct buf reply = {0};
  if (read_all(fd, &reply) < 0 || reply.len == 0) fail(version, 11, "ctnetd closed the connection without an answer", "see the ctnetd.log in the state directory; try again");

  char *p = reply.data, *end = reply.data + reply.len;
  char *nl1 = memchr(p, '\n', reply.len);
  char *nl2 = nl1 ? memchr(nl1 + 1, '\n', (size_t)(end - nl1 - 1)) : NULL;
  if (!nl2) fail(version, 5, "ctnetd sent a malformed reply", "see the ctnetd.log in the state directory");
  int code = atoi(p);
  size_t outlen = strtoul(nl1 + 1, NULL, 10);
  char *body = nl2 + 1;
  if (outlen > (size_t)(end - body)) fail(version, 5, "ctnetd sent a truncated reply", "see the ctnetd.log in the state directory");
  write_all(1, body, outlen);
  write_all(2, body + outlen, (size_t)(end - body - outlen));
  return code;
}
