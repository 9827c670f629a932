// Ping-pong latency of the bare wake-up mechanisms between two processes,
// with no data: what a blocking round trip costs on this machine before any
// transport does work. Modes: 0 eventfd + edge-triggered epoll (hvsock's
// links), 1 pipe + epoll + drain, 2 Unix stream socket read/write, 3 blocking
// eventfd read.
//   gcc -O2 -o /tmp/wake-pingpong scripts/wake-pingpong.c
//   for m in 0 1 2 3; do /tmp/wake-pingpong $m 20000; done
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <unistd.h>
#include <fcntl.h>
#include <time.h>
#include <sys/eventfd.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e6+t.tv_nsec/1e3;}
static int cmp(const void*a,const void*b){double x=*(double*)a,y=*(double*)b;return x<y?-1:x>y;}
enum {EVFD, PIPE, UDS, EVBLK};
static int mode;
static int ep_for(int fd){int e=epoll_create1(0);struct epoll_event ev={.events=EPOLLIN|EPOLLET};ev.data.u64=1;epoll_ctl(e,EPOLL_CTL_ADD,fd,&ev);return e;}
static void sig(int fd){ if(mode==EVFD||mode==EVBLK){uint64_t one=1;write(fd,&one,8);} else {char c=1;write(fd,&c,1);} }
static void waitfd(int ep,int fd){ struct epoll_event ev; if(mode==UDS){char c; read(fd,&c,1); return;} if(mode==EVBLK){uint64_t v; read(fd,&v,8); return;} epoll_wait(ep,&ev,1,-1); if(mode==PIPE){char b[64]; read(fd,b,64);} }
int main(int argc,char**argv){
  mode=atoi(argv[1]); int n=atoi(argv[2]);
  int a_in, a_out, b_in, b_out; // a waits on a_in, signals a_out (=b's in)
  if(mode==EVFD){int e1=eventfd(0,EFD_NONBLOCK),e2=eventfd(0,EFD_NONBLOCK); a_in=e1;b_out=e1;b_in=e2;a_out=e2;}
  else if(mode==PIPE){int p1[2],p2[2];pipe2(p1,O_NONBLOCK);pipe2(p2,O_NONBLOCK);a_in=p1[0];b_out=p1[1];b_in=p2[0];a_out=p2[1];}
  else if(mode==EVBLK){int e1=eventfd(0,0),e2=eventfd(0,0); a_in=e1;b_out=e1;b_in=e2;a_out=e2;}
  else {int s[2];socketpair(AF_UNIX,SOCK_STREAM,0,s);a_in=a_out=s[0];b_in=b_out=s[1];}
  if(fork()==0){int ep=(mode==UDS||mode==EVBLK)?-1:ep_for(b_in); for(int i=0;i<n;i++){waitfd(ep,b_in);sig(b_out);} _exit(0);}
  int ep=(mode==UDS||mode==EVBLK)?-1:ep_for(a_in); double*l=malloc(n*sizeof*l);
  for(int i=0;i<n;i++){double t=now();sig(a_out);waitfd(ep,a_in);l[i]=now()-t;}
  wait(0); qsort(l,n,sizeof*l,cmp); printf("%s median %.1f us p99 %.1f\n", mode==0?"eventfd+epollET":mode==1?"pipe+epoll+drain":mode==2?"uds read/write":"eventfd blocking read", l[n/2], l[n*99/100]);
}
