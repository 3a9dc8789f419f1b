/*
 * The listening half of busybox's full netcat (nc_bloaty), for the image podman's networking tests
 * run (test/lab/podman-bats.test.ts): they start `nc -l -n -v -p PORT` and read its -v lines, and
 * `nc -l -p PORT -e /bin/cat`. Debian's busybox-static has the small nc, without -n and -v. Built
 * static (cc -static) and copied into the image as /bin/nc.
 *
 *   nc -l -p PORT [-n] [-v] [-e PROG]
 *
 * Listens on [::]:PORT (IPv4 too), takes one connection, then either execs PROG with the socket as
 * stdin and stdout, or copies the socket to stdout and stdin to the socket until the peer closes.
 * -v prints what busybox prints, on stderr:
 *   listening on [::]:PORT ...
 *   connect to [LOCAL]:PORT from [PEER]:PEERPORT
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int write_all(int fd, const char *buf, ssize_t n) {
  while (n > 0) {
    ssize_t w = write(fd, buf, (size_t)n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    buf += w;
    n -= w;
  }
  return 0;
}

static const char *addr(const struct sockaddr_in6 *a, char *buf, size_t len) {
  char ip[INET6_ADDRSTRLEN];
  inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof ip);
  snprintf(buf, len, "[%s]:%u", ip, (unsigned)ntohs(a->sin6_port));
  return buf;
}

int main(int argc, char **argv) {
  int listen_mode = 0, verbose = 0, opt;
  const char *port = NULL, *prog = NULL;
  while ((opt = getopt(argc, argv, "lnvp:e:")) != -1) {
    switch (opt) {
    case 'l': listen_mode = 1; break;
    case 'n': break; /* numeric only: this nc never resolves names */
    case 'v': verbose = 1; break;
    case 'p': port = optarg; break;
    case 'e': prog = optarg; break;
    default: fprintf(stderr, "usage: nc -l -p PORT [-n] [-v] [-e PROG]\n"); return 1;
    }
  }
  if (!listen_mode || !port || optind != argc) {
    fprintf(stderr, "nc: this nc only listens: nc -l -p PORT [-n] [-v] [-e PROG]\n");
    return 1;
  }
  int s = socket(AF_INET6, SOCK_STREAM, 0), zero = 0, one = 1;
  if (s < 0) { perror("nc: socket"); return 1; }
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
  struct sockaddr_in6 me = { .sin6_family = AF_INET6, .sin6_addr = in6addr_any, .sin6_port = htons((uint16_t)atoi(port)) };
  if (bind(s, (struct sockaddr *)&me, sizeof me) < 0 || listen(s, 1) < 0) { perror("nc: bind"); return 1; }
  if (verbose) fprintf(stderr, "listening on [::]:%s ...\n", port);
  struct sockaddr_in6 peer, local;
  socklen_t plen = sizeof peer, llen = sizeof local;
  int c;
  while ((c = accept(s, (struct sockaddr *)&peer, &plen)) < 0) {
    if (errno != EINTR) { perror("nc: accept"); return 1; }
  }
  close(s);
  if (verbose) {
    char a[80], b[80];
    getsockname(c, (struct sockaddr *)&local, &llen);
    fprintf(stderr, "connect to %s from %s\n", addr(&local, a, sizeof a), addr(&peer, b, sizeof b));
  }
  if (prog) {
    dup2(c, 0);
    dup2(c, 1);
    close(c);
    execl(prog, prog, (char *)NULL);
    perror("nc: exec");
    return 1;
  }
  struct pollfd fds[2] = { { .fd = c, .events = POLLIN }, { .fd = 0, .events = POLLIN } };
  char buf[16384];
  for (;;) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return 1;
    }
    if (fds[0].revents) {
      ssize_t n = read(c, buf, sizeof buf);
      if (n <= 0) return 0; /* the peer closed: done */
      if (write_all(1, buf, n) < 0) return 1;
    }
    if (fds[1].revents) {
      ssize_t n = read(0, buf, sizeof buf);
      if (n <= 0) fds[1].fd = -1; /* stdin ended (it is /dev/null under podman run -d): keep reading the peer */
      else if (write_all(c, buf, n) < 0) return 1;
    }
  }
}
