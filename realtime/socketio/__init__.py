"""Engine.IO v4 / Socket.IO v5 at /socket.io/, on Channels (README "Socket.IO").

Sessions live in Redis, not in a process, so any web process can serve any
request of any session: no sticky sessions behind a load balancer.
"""
